#pragma once
// The one reading of an RLHF experiment's keys (model, algo, data, reward, rollout, placement,
// workers), shared by the controller's program and every worker, so they cannot disagree and
// each default is written once.
#include <cstdint>
#include <string>
#include <vector>

#include "actors/lm/data.hpp"
#include "algorithms/lm_algorithms.hpp"
#include "algorithms/lm_trainer.hpp"
#include "core/config.hpp"
#include "envs/text_tasks.hpp"
#include "runtime/layout.hpp"

namespace flotilla::models {
struct EngineConfig;
}

namespace flotilla::actors::lm {

struct RewardConfig {
  std::string kind = "rule";   // rule, model (a reward head) or command
  std::string rule = "exact";  // exact, numeric or similarity (partial credit by edit distance)
  std::string format;          // a regular expression the whole response should match
  double format_weight = 0;
  int64_t length_limit = 0;
  double length_coef = 0;
  envs::RewardCommand command;   // kind command: the program, its shell, time and limits
  std::string on_error = "stop";  // stop or zero
};

// async: generation and training overlap, the trainer learning from samples up to
// `max_staleness` versions old (0: synchronous, every sample made by the weights it trains).
struct AsyncConfig {
  static constexpr int64_t kUnbounded = -1;
  int64_t max_staleness = 0;
  std::string on_update = "continue";   // in-flight sequences at a weight sync: continue, recompute (the KV cache), abort
  std::string objective = "decoupled";  // decoupled (behaviour, proximal and current policies) or plain (PPO against the behaviour policy)
  double is_cap = 5.0;                  // the decoupled objective's cap on the behaviour importance weight
  int64_t max_inflight = 0;             // prompts generating at once per rollout worker; 0: as many as the bound admits
  bool deterministic = false;           // rows of one width, so a run can be repeated from its schedule
  std::string schedule;                 // with deterministic: the schedule.json of an earlier deterministic run, to repeat it
  double wait_timeout_s = 600;          // the longest any wait for samples may take before the run stops naming it
  bool overlaps() const { return max_staleness != 0; }
};

struct RlhfConfig {
  // model:
  std::string model_path, tokenizer, ref_path, critic_path, reward_path;
  // algo:
  std::string algo = "grpo";
  algorithms::LmAlgorithm family;
  int64_t batch_size = 16;  // prompts (or examples, or pairs) per step
  int64_t group_size = 1;   // samples per prompt
  bool norm_by_std = true;
  double gamma = 1.0, lam = 0.95;
  double kl_coef = 0;
  std::string kl_in = "loss";                // loss or reward
  double kl_target = 0, kl_horizon = 10000;  // target > 0: adaptive coefficient (kl in reward)
  bool dynamic_sampling = false;
  int64_t overlong_buffer = 0;
  double overlong_penalty = 1.0;
  double value_clip = 0.2;
  algorithms::PolicyLossConfig loss;
  algorithms::LmOptimConfig actor_optim, critic_optim;
  // data: and reward:
  DataConfig data;
  RewardConfig reward;
  // rollout:
  int64_t max_new_tokens = 32;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  int64_t block_size = 16, num_blocks = 4096, max_batch = 256, prefill_chunk = 256;
  std::string weights = "float32";  // the engine's matrix weights: float32 or bfloat16
  // The weight sync's transfer (split placement): buckets of at most sync_bucket_mb MiB,
  // sync_window of them in flight per actor rank.
  double sync_bucket_mb = 32;
  int sync_window = 4;
  // async:
  AsyncConfig async;
  // workers:
  std::string placement = "colocated";
  struct Group {
    std::string role;
    int count = 1, threads = 1;
    runtime::Parallel parallel;  // how its ranks split the model (count = parallel.size())
  };
  std::vector<Group> workers;      // the process groups to start (one "colocated" group, or one per role)
  std::vector<std::string> roles;  // the roles this algorithm uses

  // The rollout's generation engine, as rollout: sets it.
  models::EngineConfig engine() const;

  static RlhfConfig read(core::ConfigView root);
  bool uses(const std::string& role) const;
  // The model directory a role loads: model.ref or model.critic when set, else model.path.
  std::string model_of(const std::string& role) const;
  // Throws ConfigError when a tensor-parallel group's model cannot split over its ranks (its
  // heads, key/value heads or MLP width), naming the role, its tp and the model.
  void check_models_split() const;
  bool needs_ref() const { return family.reference || kl_coef > 0; }
  // One optimizer step per batch (actor epochs and mini_batches 1) and no KL in the reward: the
  // policy before the update is the one the update's forward pass runs, so its log-probs serve
  // as the old (proximal) ones and no separate pass is needed.
  bool reuses_log_probs() const {
    return actor_optim.epochs == 1 && actor_optim.mini_batches == 1 && !(needs_ref() && kl_in == "reward");
  }
  // The group that hosts `role` ("colocated" or the role itself).
  std::string group_of(const std::string& role) const;
  const Group& group(const std::string& name) const;
};

}  // namespace flotilla::actors::lm
