#pragma once
// The CUDA GAE kernel: one thread per env column, the same gae_column as the CPU twin.
#include <cuda_runtime.h>

#include "kernels/gae.hpp"

namespace flotilla::kernels {

__global__ void gae_kernel(GaeArgs a) {
  const int64_t env = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (env < a.envs) gae_column(a, env);
}

inline cudaError_t gae_cuda(const GaeArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 128;
  gae_kernel<<<static_cast<unsigned>((a.envs + kThreads - 1) / kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace flotilla::kernels
