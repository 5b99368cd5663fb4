#include "actors/rl/config.hpp"

#include <limits>

#include "algorithms/algorithm.hpp"
#include "algorithms/staleness.hpp"
#include "core/error.hpp"
#include "envs/registry.hpp"
#include "models/policy.hpp"

namespace flotilla::actors::rl {
namespace {
const std::vector<std::string> kRoles = {"env_actor", "policy_worker", "trainer", "buffer"};
}

DistributedRlConfig DistributedRlConfig::read(core::ConfigView root) {
  DistributedRlConfig c;
  for (auto w : root.list("workers")) {
    Group g{w.choice("role", "env_actor", kRoles), w.get<int>("count", 1, core::in_range(1, 1024)),
            w.get<int>("threads", 1, core::in_range(1, 256))};  // libtorch threads in each of these workers
    w.choice("placement", "local", {"local"});                  // where they run; clusters come with Slurm support
    for (const auto& seen : c.workers)
      if (seen.role == g.role) w.fail("role", "role '" + g.role + "' is listed twice");
    c.workers.push_back(g);
  }
  core::ConfigView d = root.section("distributed");
  c.inline_policy = d.get<bool>("inline_policy", false);
  for (const auto& r : kRoles) {
    if (r == "policy_worker" && c.inline_policy) {
      if (c.count(r)) root.fail("workers", "policy_worker workers are not used with distributed.inline_policy: true (actors act themselves)");
      continue;
    }
    if (!c.count(r) && r != "buffer")
      root.fail("workers", "a distributed RL run needs env_actor, policy_worker and trainer workers; '" + r + "' is missing");
  }
  c.seed = static_cast<uint64_t>(root.get<int64_t>("seed", 1));
  c.deterministic = root.get<bool>("deterministic", false);
  core::ConfigView env = root.section("env");
  c.env = envs::env_spec(env);  // with its params (a scenario's sizes)
  envs::read_env_options(env);
  env.section("params");
  std::unique_ptr<models::Policy> probe = algorithms::make_policy(root, c.env);
  core::ConfigView algo = root.section("algo");
  c.on_policy = algorithms::make_algorithm(algo, *probe)->takes_gae_batches();
  if (c.count("trainer") > 1 && algo.has("target_kl") && algo.get<double>("target_kl", 0.0) > 0)
    algo.fail("target_kl", "an early stop on KL would let data-parallel trainers take different numbers of steps; set it to 0 "
                           "with more than one trainer");
  if (c.count("trainer") > c.count("env_actor"))
    root.fail("workers", "more trainers than env actors: every trainer needs at least one actor's fragments");
  core::ConfigView train = root.section("train");
  c.total_steps = train.get<int64_t>("total_steps", c.total_steps, core::at_least<int64_t>(1));
  c.fragment_steps = train.get<int64_t>("num_steps", c.fragment_steps, core::at_least<int64_t>(1));
  train.get<int>("torch_threads", 1, core::in_range(1, 256));
  core::ConfigView norm = root.section("normalize");
  if (norm.get<bool>("obs", false) || norm.get<bool>("reward", false))
    norm.fail("obs", "observation and reward normalization are not available in distributed runs yet");
  norm.get<double>("clip_obs", 10.0);
  norm.get<double>("clip_reward", 10.0);
  core::ConfigView ckpt = root.section("checkpoint");
  c.checkpoint_every = ckpt.get<int>("every", c.checkpoint_every, core::at_least(0));
  c.checkpoint_keep = ckpt.get<int>("keep", c.checkpoint_keep, core::at_least(1));
  c.max_batch = d.get<int64_t>("max_batch", c.max_batch, core::at_least<int64_t>(1));
  c.transport = d.choice("transport", c.transport, {"tcp", "ipc"});
  c.env_ring = d.get<int>("env_ring", c.env_ring, core::in_range(1, 8));
  c.buffer_capacity = d.get<int64_t>("buffer_capacity", c.buffer_capacity, core::at_least<int64_t>(1));
  c.buffer_mode = d.choice("buffer_mode", c.buffer_mode, {"fifo", "replay"});
  if (c.buffer_mode == "replay" && c.on_policy)
    d.fail("buffer_mode", "replay feeds old fragments again; it suits off-policy algorithms such as impala, not '" +
                              algo.get<std::string>("name", "ppo") + "'");
  if (c.buffer_mode == "replay" && c.deterministic)
    d.fail("buffer_mode", "replay draws fragments as they happen to be queued; a deterministic run cannot use it");
  c.max_staleness = d.get<int64_t>("max_staleness", c.on_policy ? 1 : algorithms::Staleness::kUnbounded, core::at_least<int64_t>(-1));
  c.max_delay_ms = d.get<int64_t>("max_delay_ms", c.max_delay_ms, core::at_least<int64_t>(0));
  if (d.has("heartbeat_timeout_ms")) d.fail("heartbeat_timeout_ms", "moved: every program's failure detection is fault.heartbeat_timeout_ms now");
  return c;
}

int DistributedRlConfig::count(const std::string& role) const {
  for (const auto& g : workers)
    if (g.role == role) return g.count;
  return 0;
}

int DistributedRlConfig::threads(const std::string& role) const {
  for (const auto& g : workers)
    if (g.role == role) return g.threads;
  return 1;
}

std::string DistributedRlConfig::sample_target(int actor_rank) const {
  const int buffers = count("buffer");
  return buffers > 0 ? "buffer/" + std::to_string(actor_rank % buffers)
                     : "trainer/" + std::to_string(actor_rank % std::max(1, count("trainer")));
}

}  // namespace flotilla::actors::rl
