#pragma once
// Advantage estimators, chosen by name (`algo.advantage`): "gae" (generalized advantage
// estimation, lambda = 1 gives discounted returns minus values).
#include <ATen/core/Tensor.h>

#include "core/batch.hpp"

#include <string>
#include <vector>

namespace flotilla::algorithms {

struct Rollout {
  at::Tensor reward;      // [T, N] float32
  at::Tensor value;       // [T, N] float32
  at::Tensor next_value;  // [T, N] float32: V(s_{t+1}), or V(final obs) where truncated
  at::Tensor terminated;  // [T, N] bool
  at::Tensor done;        // [T, N] bool
};

struct Advantages {
  at::Tensor advantage;  // [T, N]
  at::Tensor ret;        // [T, N] advantage + value: the value target
};

Advantages estimate_advantages(const std::string& name, const Rollout& r, double gamma, double lambda);

// A rollout fragment, time-major [T, N, ...], as an env batch produced it.
struct Fragment {
  at::Tensor obs, action, log_prob, value, reward;  // value: V(s_t) at acting time
  at::Tensor terminated, truncated;                  // bool
  at::Tensor final_value;                            // [T, N]: V(final obs) where truncated, else ignored
  at::Tensor bootstrap_value;                        // [N]: V(obs after the last step)
};

// The flat [T * N] training batch of a fragment: obs, action, log_prob, value, advantage, return.
// A truncated step bootstraps from V(final obs), a terminated one from 0.
core::Batch training_batch(const Fragment& f, const std::string& advantage, double gamma, double lambda);
std::vector<std::string> advantage_names();

}  // namespace flotilla::algorithms
