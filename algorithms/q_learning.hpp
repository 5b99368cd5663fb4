#pragma once
// Value-based multi-agent learners on episode replay: IQL (independent Q-learning, each agent on
// its own reward), VDN (the team's Q is the sum of the agents') and QMIX (a monotonic mixing
// network whose weights come from hypernetworks of the global state). One agent network is
// shared by all agents; it reads [observation | one-hot agent id | one-hot last action]. Targets
// come from target networks, with double Q-learning by default. libtorch stays in the .cpp.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "algorithms/episode_replay.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"

namespace at {
class Generator;
}

namespace flotilla::algorithms {

struct QConfig {
  std::string mixer = "qmix";  // none (IQL), vdn, qmix; set from algo.name
  double lr = 5e-4;
  double gamma = 0.99;
  std::vector<int64_t> hidden = {64, 64};
  int64_t mixing_embed = 32;
  int64_t hypernet_hidden = 64;
  bool double_q = true;
  int target_update_interval = 200;  // updates between hard target copies
  double max_grad_norm = 10.0;
  int64_t batch_size = 32;     // episodes per update
  int64_t buffer_size = 5000;  // episodes
  int64_t learning_starts = 32;  // episodes in the buffer before updates begin
  int updates_per_iteration = 1;
  double epsilon_start = 1.0, epsilon_finish = 0.05;
  int64_t epsilon_anneal_steps = 100'000;  // env steps

  static QConfig read(const core::ConfigView& algo);
  double epsilon(int64_t env_steps) const;
};

// The algorithm names this family answers to.
std::vector<std::string> q_learner_names();

class QLearner {
 public:
  // Weights initialized from libtorch's default generator (seed it first).
  QLearner(const QConfig& config, const EpisodeShape& shape);
  ~QLearner();

  const QConfig& config() const { return config_; }
  // Epsilon-greedy actions among the available ones: obs [N, A, O], avail [N, A, K] bool,
  // last_action [N, A] int64 (-1 at an episode's start). Returns [N, A] int64.
  at::Tensor act(const at::Tensor& obs, const at::Tensor& avail, const at::Tensor& last_action, double epsilon,
                 at::Generator& gen);
  // One gradient step on an episode batch; returns losses/... metrics.
  core::Scalars update(const core::Batch& episodes);

  // Networks (agent, mixer, their targets) and optimizer state, for checkpoints.
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load(const std::vector<std::pair<std::string, at::Tensor>>& tensors);

  // The team Q of given agent Qs [B, T, A] and states [B, T, S] through the online mixer (tests).
  at::Tensor mix(const at::Tensor& agent_qs, const at::Tensor& states);

 private:
  struct Impl;
  QConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::algorithms
