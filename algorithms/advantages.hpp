#pragma once
// Advantage estimation for RL and LM training: one Advantages type, one GAE (kernels/gae.hpp, a
// CUDA kernel with its CPU twin), and the estimators an LM algorithm chooses by name: "gae" (PPO
// with a critic), "grpo", "rloo" and "reinforce_pp".
#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "core/registry.hpp"

namespace flotilla::algorithms {

struct Advantages {
  at::Tensor advantages;
  at::Tensor returns;  // advantages + values: the value target (GAE only)
};

// A time-major rollout, [T, N] float32 (bool for the flags).
struct Rollout {
  at::Tensor reward;
  at::Tensor value;       // V(s_t)
  at::Tensor next_value;  // V(s_{t+1}), or V(final obs) where truncated
  at::Tensor terminated;  // the next state's value is 0
  at::Tensor done;        // nothing flows back across this step (terminated or truncated)
};

// Generalized advantage estimation over every column of `r` (on the tensors' device).
Advantages gae(const Rollout& r, double gamma, double lambda);

// A rollout fragment, time-major [T, N, ...], as an env batch produced it.
struct Fragment {
  at::Tensor obs, action, log_prob, value, reward;  // value: V(s_t) at acting time
  at::Tensor terminated, truncated;                  // bool
  at::Tensor final_value;                            // [T, N]: V(final obs) where truncated, else ignored
  at::Tensor bootstrap_value;                        // [N]: V(obs after the last step)
};

// The flat [T * N] training batch of a fragment: obs, action, log_prob, value, advantage, return.
// A truncated step bootstraps from V(final obs), a terminated one from 0.
core::Batch training_batch(const Fragment& f, double gamma, double lambda);

// ---- estimators over LM sequences (the layout of algorithms/lm_trainer.hpp) ----

struct AdvantageInputs {
  at::Tensor scores;         // [B] sequence rewards (KL penalties excluded)
  at::Tensor response_mask;  // [B, T-1]
  at::Tensor kl;             // [B, T-1] per-token KL to the reference, or undefined
  double kl_coef = 0;        // > 0: the KL is part of the reward
  at::Tensor values;         // [B, T-1] critic values (gae only)
  int64_t group_size = 1;    // consecutive rows per prompt
  double gamma = 1.0, lam = 0.95;
  bool norm_by_std = true;   // grpo: divide by the group's std
};
using AdvantageEstimator = std::function<Advantages(const AdvantageInputs&)>;
core::Registry<AdvantageEstimator>& advantage_estimators();

}  // namespace flotilla::algorithms
