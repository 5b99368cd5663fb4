#pragma once
// CUDA launchers for batched multi-agent environments: one thread per env, running the same
// ma_step_one and ma_reset_one as the CPU loop in multi_agent_batch.hpp.
#include <cuda_runtime.h>

#include "kernels/env_batch.cuh"
#include "kernels/multi_agent_batch.hpp"

namespace flotilla::kernels {

template <class E>
__global__ void ma_env_step_kernel(typename E::Params p, MultiAgentBuffers b) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < b.num_envs) ma_step_one<E>(p, b, i);
}

template <class E>
__global__ void ma_env_reset_kernel(typename E::Params p, MultiAgentBuffers b) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= b.num_envs) return;
  b.episode[i] = 0;
  ma_reset_one<E>(p, b, i);
}

template <class E>
cudaError_t cuda_ma_env_step(const typename E::Params& p, const MultiAgentBuffers& b, cudaStream_t stream) {
  ma_env_step_kernel<E><<<env_blocks(b.num_envs), kEnvThreads, 0, stream>>>(p, b);
  return cudaGetLastError();
}

template <class E>
cudaError_t cuda_ma_env_reset(const typename E::Params& p, const MultiAgentBuffers& b, cudaStream_t stream) {
  ma_env_reset_kernel<E><<<env_blocks(b.num_envs), kEnvThreads, 0, stream>>>(p, b);
  return cudaGetLastError();
}

}  // namespace flotilla::kernels
