#pragma once
// Advantage estimators, chosen by name (`algo.advantage`): "gae" (generalized advantage
// estimation, lambda = 1 gives discounted returns minus values).
#include <ATen/core/Tensor.h>

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
std::vector<std::string> advantage_names();

}  // namespace flotilla::algorithms
