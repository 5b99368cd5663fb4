#pragma once
// The RLHF worker roles: actor (trains the policy), rollout (the generation engine), ref (frozen
// reference log-probs), critic (value model) and reward (reward model). With `placement: split`
// each role runs in its own workers; with `placement: colocated` one group of workers hosts every
// role the algorithm needs and they take turns (the rollout generates with the actor's own
// weights, and its KV cache exists only while it generates).
//
// RlhfConfig is the one reading of an RLHF experiment's keys, shared by the controller program
// and the workers so they cannot disagree.
#include <cstdint>
#include <string>
#include <vector>

#include "algorithms/lm_trainer.hpp"
#include "core/config.hpp"

namespace flotilla::actors {

struct RlhfConfig {
  // model:
  std::string model_path, tokenizer, ref_path, critic_path, reward_path;
  // algo:
  std::string algo = "grpo";  // sft, reward_model, dpo, ppo, grpo, rloo, reinforce_pp, online_dpo
  std::string estimator;      // advantage estimator for the RL algorithms ("" otherwise)
  int64_t batch_size = 16;    // prompts (or examples, or pairs) per step
  int64_t group_size = 1;     // samples per prompt
  bool norm_by_std = true;
  double gamma = 1.0, lam = 0.95;
  double kl_coef = 0;
  std::string kl_in = "loss";  // loss or reward
  double kl_target = 0, kl_horizon = 10000;  // target > 0: adaptive coefficient (kl in reward)
  bool dynamic_sampling = false;
  int64_t overlong_buffer = 0;
  double overlong_penalty = 1.0;
  double value_clip = 0.2;
  algorithms::PolicyLossConfig loss;
  algorithms::LmOptimConfig actor_optim, critic_optim;
  // reward:
  std::string reward_kind = "rule";  // rule, model (served by reward workers) or command
  // rollout:
  int64_t max_new_tokens = 32;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  int64_t block_size = 16, num_blocks = 1024, max_batch = 64;
  // workers:
  std::string placement = "colocated";
  struct Group {
    std::string role;
    int count = 1, threads = 1;
  };
  std::vector<Group> workers;  // the process groups to start (one "colocated" group, or one per role)
  std::vector<std::string> roles;  // the roles this algorithm uses

  static RlhfConfig read(core::ConfigView root);
  bool uses(const std::string& role) const;
  bool generates() const;  // the algorithm samples from the policy during training
  bool needs_ref() const;
  // The group that hosts `role` ("colocated" or the role itself).
  std::string group_of(const std::string& role) const;
  const Group& group(const std::string& name) const;
};

// The RLHF roles; called by the worker runtime.
void register_lm_roles();

}  // namespace flotilla::actors
