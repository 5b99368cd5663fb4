#pragma once
// Generalized advantage estimation for one env's column of a [T, N] rollout, written once for
// the CPU and CUDA. Termination and truncation differ: at a terminal step the next state's value
// is 0; at a truncated step it is the value of the final observation (the caller puts it in
// next_value); either way the backward recursion stops at an episode's end.
#include <cstdint>

#include "kernels/hd.hpp"

namespace flotilla::kernels {

struct GaeArgs {
  int64_t steps = 0, envs = 0;
  const float* reward = nullptr;      // [T, N]
  const float* value = nullptr;       // [T, N] V(s_t)
  const float* next_value = nullptr;  // [T, N] V(s_{t+1}), or V(final obs) where truncated
  const bool* terminated = nullptr;   // [T, N]
  const bool* done = nullptr;         // [T, N] terminated or truncated
  float gamma = 0.99f, lambda = 0.95f;
  float* advantage = nullptr;         // [T, N] out
  float* ret = nullptr;               // [T, N] out: advantage + value
};

FLOTILLA_HD void gae_column(const GaeArgs& a, int64_t env) {
  float next_advantage = 0.0f;
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    const int64_t k = t * a.envs + env;
    const float bootstrap = a.terminated[k] ? 0.0f : a.next_value[k];
    const float delta = a.reward[k] + a.gamma * bootstrap - a.value[k];
    const float carry = a.done[k] ? 0.0f : next_advantage;
    next_advantage = delta + a.gamma * a.lambda * carry;
    a.advantage[k] = next_advantage;
    a.ret[k] = next_advantage + a.value[k];
  }
}

// The CPU twin: every column in turn.
inline void gae_cpu(const GaeArgs& a) {
  for (int64_t env = 0; env < a.envs; ++env) gae_column(a, env);
}

}  // namespace flotilla::kernels
