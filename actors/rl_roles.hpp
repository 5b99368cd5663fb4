#pragma once
// Pieces the RL worker roles (env actor, policy worker, trainer) share: reading the run's config
// in a worker, and pushing metrics to the controller.
#include <memory>
#include <string>

#include "actors/worker.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace flotilla::actors {

// The resolved experiment config a worker receives in `configure`.
struct RunConfig {
  explicit RunConfig(const std::string& yaml);
  std::unique_ptr<core::Config> config;
  core::ConfigView root() const { return config->root(); }
};

// Sends metrics rows to the controller (PUSH; never blocks the worker).
class MetricsPusher {
 public:
  MetricsPusher(zmq::context_t& context, const WorkerInfo& info);
  ~MetricsPusher();
  void push(int64_t step, const core::Scalars& values);

 private:
  std::unique_ptr<zmq::socket_t> socket_;
  std::string name_;
};

// The RL roles: env_actor, policy_worker, trainer.
void register_rl_roles();

}  // namespace flotilla::actors
