#pragma once
// CUDA launchers for batched environments: one thread per env, running the same step_one,
// finish_one and reset_one as the CPU twin in env_batch.hpp. Instantiate with
// FLOTILLA_CUDA_ENV(Type) in a .cu file.
#include <cuda_runtime.h>

#include "kernels/env_batch.hpp"

namespace flotilla::kernels {

template <class E>
__global__ void env_step_kernel(typename E::Params p, EnvBuffers b) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= b.num_envs) return;
  step_one<E>(p, b, i, ObsRef{b.obs + i * E::kObsDim, 1});
  finish_one<E>(p, b, i);
}

template <class E>
__global__ void env_reset_kernel(typename E::Params p, EnvBuffers b) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= b.num_envs) return;
  b.episode[i] = 0;
  reset_one<E>(p, b, i);
}

constexpr int kEnvThreads = 256;
inline unsigned env_blocks(int64_t envs) { return static_cast<unsigned>((envs + kEnvThreads - 1) / kEnvThreads); }

// Launch on `stream`; return the CUDA error of the launch (cudaSuccess when queued).
template <class E>
cudaError_t cuda_env_step(const typename E::Params& p, const EnvBuffers& b, cudaStream_t stream) {
  env_step_kernel<E><<<env_blocks(b.num_envs), kEnvThreads, 0, stream>>>(p, b);
  return cudaGetLastError();
}

template <class E>
cudaError_t cuda_env_reset(const typename E::Params& p, const EnvBuffers& b, cudaStream_t stream) {
  env_reset_kernel<E><<<env_blocks(b.num_envs), kEnvThreads, 0, stream>>>(p, b);
  return cudaGetLastError();
}

}  // namespace flotilla::kernels
