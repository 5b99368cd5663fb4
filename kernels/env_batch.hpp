#pragma once
// The per-environment half of a batched environment step, written once for the CPU and CUDA:
// step env i, count its episode, and when it ends keep its final observation and episode
// statistics and reset it in place. Buffers are raw pointers into tensors owned by the caller.
//
// An environment type E provides (see envs/classic/ for examples):
//   kStateDim, kObsDim, kActionKind, kActionDim, kNumActions (Discrete), Action, Params,
//   reset(params, StateRef, EnvRng&), step(params, StateRef, Action, float& reward,
//   bool& terminated), observe(params, StateRef, ObsRef).
#include <cstdint>

#include "kernels/hd.hpp"
#include "kernels/philox.hpp"

namespace flotilla::kernels {

enum class ActionKind { Discrete, MultiDiscrete, Box };

// One env's physical state inside a struct-of-arrays buffer: variable k of env i lives at
// base[k * num_envs + i], so a loop over envs reads each variable contiguously.
// Variables are doubles unless a multi-agent env stores a narrower type (see multi_agent_batch.hpp).
template <class T>
struct StateRefOf {
  T* p;
  int64_t stride;
  FLOTILLA_HD T& operator[](int k) const { return p[k * stride]; }
};
using StateRef = StateRefOf<double>;

// Where one env's observation goes: component k at p[k * stride]. Rows of the obs tensor
// (stride 1), or a block's struct-of-arrays scratch on the CPU, which vectorizes for any size.
struct ObsRef {
  float* p;
  int64_t stride;
  FLOTILLA_HD float& operator[](int k) const { return p[k * stride]; }
};

struct EnvBuffers {
  int64_t num_envs = 0;
  double* state = nullptr;              // [state_dim, N]
  float* obs = nullptr;                 // [N, obs_dim]
  float* final_obs = nullptr;           // [N, obs_dim], valid where an episode ended
  float* reward = nullptr;              // [N]
  bool* terminated = nullptr;           // [N]
  bool* truncated = nullptr;            // [N]
  double* return_so_far = nullptr;      // [N]
  int32_t* elapsed = nullptr;           // [N] steps taken in the current episode
  uint32_t* episode = nullptr;          // [N] episodes begun, the random stream's counter
  float* episode_return = nullptr;      // [N] of the episode that just ended
  int32_t* episode_length = nullptr;    // [N]
  const void* actions = nullptr;        // int64 [N] or [N, k]; float [N, k]
  uint64_t seed = 0;
  int32_t max_episode_steps = 0;
};

template <class E>
FLOTILLA_HD typename E::Action action_of(const void* actions, int64_t i) {
  if constexpr (E::kActionKind == ActionKind::Discrete) {
    return static_cast<const int64_t*>(actions)[i];
  } else if constexpr (E::kActionKind == ActionKind::MultiDiscrete) {
    return static_cast<const int64_t*>(actions) + i * E::kActionDim;
  } else {
    return static_cast<const float*>(actions) + i * E::kActionDim;
  }
}

template <class E>
FLOTILLA_HD void reset_one(const typename E::Params& p, const EnvBuffers& b, int64_t i) {
  EnvRng rng(b.seed, static_cast<uint64_t>(i), b.episode[i]);
  StateRef s{b.state + i, b.num_envs};
  E::reset(p, s, rng);
  b.elapsed[i] = 0;
  b.return_so_far[i] = 0.0;
  E::observe(p, s, ObsRef{b.obs + i * E::kObsDim, 1});
}

// Steps env i and writes its reward and done flags, and its observation to `obs`.
template <class E>
FLOTILLA_HD void step_one(const typename E::Params& p, const EnvBuffers& b, int64_t i, ObsRef obs) {
  StateRef s{b.state + i, b.num_envs};
  float reward;
  bool terminated;
  E::step(p, s, action_of<E>(b.actions, i), reward, terminated);
  const int32_t t = b.elapsed[i] + 1;
  b.elapsed[i] = t;
  b.reward[i] = reward;
  b.terminated[i] = terminated;
  b.truncated[i] = t >= b.max_episode_steps;
  b.return_so_far[i] += reward;
  E::observe(p, s, obs);
}

// After step_one: if env i's episode ended, keeps what a learner needs and starts the next one.
template <class E>
FLOTILLA_HD void finish_one(const typename E::Params& p, const EnvBuffers& b, int64_t i) {
  if (!(b.terminated[i] || b.truncated[i])) return;
  for (int k = 0; k < E::kObsDim; ++k) b.final_obs[i * E::kObsDim + k] = b.obs[i * E::kObsDim + k];
  b.episode_return[i] = static_cast<float>(b.return_so_far[i]);
  b.episode_length[i] = b.elapsed[i];
  b.episode[i] += 1;
  reset_one<E>(p, b, i);
}

// ---- The CPU twin ----
//
// Envs are stepped in blocks of kCpuBlock consecutive envs with a vectorized loop (SIMD sin and
// cos from glibc's libmvec, selected with FLOTILLA_ENV_CXX_FLAGS in CMake). Buffers hold a whole
// number of blocks (the envs past num_envs are padding that no one reads), so every env always
// runs through the same instructions and a run does not depend on how envs are split over
// threads. The episode ends, rare and branchy, are handled in a second pass over the real envs.
constexpr int64_t kCpuBlock = 64;

constexpr int64_t padded_envs(int64_t num_envs) { return (num_envs + kCpuBlock - 1) / kCpuBlock * kCpuBlock; }

#if !defined(__CUDACC__)
// One block of kCpuBlock envs starting at env `first`. The loop must sit in the body of the
// function that carries the target attribute, with a fixed trip count, for GCC to vectorize it
// with AVX2 SIMD sin and cos; hence one body text for both versions. The buffers are copied to
// locals because stores through bool* may alias anything, and fields read through a reference
// would be reloaded every iteration.
#define FLOTILLA_STEP_BLOCK_BODY                                                     \
  const EnvBuffers b = buffers;                                                      \
  const typename E::Params p = params;                                               \
  float obs[E::kObsDim * kCpuBlock];                                                 \
  _Pragma("omp simd") for (int64_t j = 0; j < kCpuBlock; ++j)                        \
      step_one<E>(p, b, first + j, ObsRef{obs + j, kCpuBlock});                      \
  for (int64_t j = 0; j < kCpuBlock; ++j)                                            \
    for (int k = 0; k < E::kObsDim; ++k) b.obs[(first + j) * E::kObsDim + k] = obs[k * kCpuBlock + j];

template <class E>
__attribute__((target("avx2,fma"), noinline)) void step_block_avx2(const typename E::Params& params,
                                                                    const EnvBuffers& buffers, int64_t first) {
  FLOTILLA_STEP_BLOCK_BODY
}

template <class E>
__attribute__((noinline)) void step_block_baseline(const typename E::Params& params, const EnvBuffers& buffers,
                                                    int64_t first) {
  FLOTILLA_STEP_BLOCK_BODY
}
#undef FLOTILLA_STEP_BLOCK_BODY

// Steps blocks [first_block, end_block) of envs, then ends and restarts the episodes that ended
// among the real envs (the first `real_envs`).
template <class E>
void cpu_step_blocks(const typename E::Params& p, const EnvBuffers& b, int64_t first_block, int64_t end_block,
                     int64_t real_envs) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  for (int64_t block = first_block; block < end_block; ++block) {
    if (avx2) step_block_avx2<E>(p, b, block * kCpuBlock);
    else step_block_baseline<E>(p, b, block * kCpuBlock);
  }
  const int64_t end = end_block * kCpuBlock < real_envs ? end_block * kCpuBlock : real_envs;
  for (int64_t i = first_block * kCpuBlock; i < end; ++i) finish_one<E>(p, b, i);
}

template <class E>
void cpu_reset_range(const typename E::Params& p, const EnvBuffers& b, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    b.episode[i] = 0;
    reset_one<E>(p, b, i);
  }
}
#endif

}  // namespace flotilla::kernels
