#pragma once
// The one reading of a distributed RL experiment's keys (workers, env, train, distributed,
// checkpoint), shared by the controller's program and every worker: each default is written
// once, and a bad key stops the run before any process starts.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "envs/vec_env.hpp"

namespace flotilla::actors::rl {

struct DistributedRlConfig {
  struct Group {
    std::string role;
    int count = 0;  // 0: the run has no such workers
    int threads = 1;
  };
  std::vector<Group> workers;  // as listed, the ones to start
  envs::EnvSpec env;
  uint64_t seed = 1;
  bool deterministic = false;  // lockstep actors and trainers, actions sampled from per-step seeds
  bool on_policy = true;       // the algorithm trains on GAE batches (PPO family)
  int64_t total_steps = 500000;
  int64_t fragment_steps = 128;  // train.num_steps: env steps per actor fragment
  // distributed:
  bool inline_policy = false;
  std::string transport = "tcp";
  int env_ring = 1;
  int64_t max_batch = 256;
  int64_t max_delay_ms = 2;
  int64_t buffer_capacity = 64;
  std::string buffer_mode = "fifo";
  int64_t max_staleness = 1;  // versions a fragment may lag the trainer: 1 on-policy, -1 (unbounded) off-policy
  // checkpoint:
  int checkpoint_every = 0;  // trainer updates between checkpoints; 0: only at the end
  int checkpoint_keep = 3;

  static DistributedRlConfig read(core::ConfigView root);
  int count(const std::string& role) const;
  int threads(const std::string& role) const;
  // Where fragments of actor `rank` go: a buffer when the run has them, else a trainer.
  std::string sample_target(int actor_rank) const;
};

}  // namespace flotilla::actors::rl
