#pragma once
// The CUDA entry points of BatchedEnv<E> and BatchedMultiAgentEnv<E>, kept free of libtorch so nvcc can fill them in
// (envs/cuda_env.cuh); null in a build without CUDA.
#include "kernels/env_batch.hpp"
#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs {

template <class E>
struct CudaHooks {
  using Fn = void (*)(const typename E::Params&, const kernels::EnvBuffers&);
  static inline Fn step = nullptr;
  static inline Fn reset = nullptr;
};

template <class E>
struct MultiAgentCudaHooks {
  using Fn = void (*)(const typename E::Params&, const kernels::MultiAgentBuffers&);
  static inline Fn step = nullptr;
  static inline Fn reset = nullptr;
};

}  // namespace flotilla::envs
