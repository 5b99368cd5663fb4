#pragma once
// V-trace targets (Espeholt et al. 2018, IMPALA) for one env's column of a [T, N] fragment,
// written once for the CPU and CUDA. With clipped importance weights rho_t and c_t:
//   v_s - V(x_s) = delta_s + gamma c_s (v_{s+1} - V(x_{s+1})),
//   delta_s = rho_s (r_s + gamma V(x_{s+1}) - V(x_s)),
// and the policy-gradient advantage rho_s (r_s + gamma v_{s+1} - V(x_s)). At a terminal step
// V(x_{s+1}) = 0; at a truncated one it is V(final obs) (in next_value); the recursion stops at
// either.
#include <cstdint>

#include "kernels/hd.hpp"

namespace flotilla::kernels {

struct VtraceArgs {
  int64_t steps = 0, envs = 0;
  const float* reward = nullptr;      // [T, N]
  const float* value = nullptr;       // [T, N] V(x_t) under the current policy
  const float* next_value = nullptr;  // [T, N] V(x_{t+1}), or V(final obs) where truncated
  const float* log_rho = nullptr;     // [T, N] log pi(a|x) - log mu(a|x)
  const bool* terminated = nullptr;   // [T, N]
  const bool* done = nullptr;         // [T, N]
  float gamma = 0.99f, rho_bar = 1.0f, c_bar = 1.0f;
  float* vs = nullptr;                // [T, N] out: value targets
  float* pg_advantage = nullptr;      // [T, N] out
};

FLOTILLA_HD float vtrace_exp_clip(float log_ratio, float bar) {
  const float r = expf(log_ratio);
  return r < bar ? r : bar;
}

FLOTILLA_HD void vtrace_column(const VtraceArgs& a, int64_t env) {
  float next_vs_minus_v = 0.0f;  // v_{s+1} - V(x_{s+1}) within the episode
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    const int64_t k = t * a.envs + env;
    const float rho = vtrace_exp_clip(a.log_rho[k], a.rho_bar);
    const float c = vtrace_exp_clip(a.log_rho[k], a.c_bar);
    const float bootstrap = a.terminated[k] ? 0.0f : a.next_value[k];
    const float carry = a.done[k] ? 0.0f : next_vs_minus_v;
    const float delta = rho * (a.reward[k] + a.gamma * bootstrap - a.value[k]);
    const float vs_minus_v = delta + a.gamma * c * carry;
    a.vs[k] = a.value[k] + vs_minus_v;
    // v_{s+1}: the next target within the episode, else the bootstrap value itself.
    const float next_vs = a.done[k] ? bootstrap : bootstrap + carry;
    a.pg_advantage[k] = rho * (a.reward[k] + a.gamma * next_vs - a.value[k]);
    next_vs_minus_v = vs_minus_v;
  }
}

inline void vtrace_cpu(const VtraceArgs& a) {
  for (int64_t env = 0; env < a.envs; ++env) vtrace_column(a, env);
}

}  // namespace flotilla::kernels
