#pragma once
// An env type's CUDA backend: install_cuda_env<Type>(), called from a .cu file when the env is
// registered, compiles the launchers for Type and hands them to BatchedEnv<Type>.
#include <string>

#include "core/error.hpp"
#include "envs/batched_env_hooks.hpp"
#include "kernels/env_batch.cuh"
#include "kernels/multi_agent_batch.cuh"

namespace flotilla::envs {

template <class E>
struct CudaEnvLaunch {
  static void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw Error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(err));
  }
  static void step(const typename E::Params& p, const kernels::EnvBuffers& b) {
    check(kernels::cuda_env_step<E>(p, b, nullptr), "env step");
  }
  static void reset(const typename E::Params& p, const kernels::EnvBuffers& b) {
    check(kernels::cuda_env_reset<E>(p, b, nullptr), "env reset");
  }
};

template <class E>
void install_cuda_env() {
  CudaHooks<E>::step = &CudaEnvLaunch<E>::step;
  CudaHooks<E>::reset = &CudaEnvLaunch<E>::reset;
}

template <class E>
void install_cuda_multi_agent_env() {
  MultiAgentCudaHooks<E>::step = [](const typename E::Params& p, const kernels::MultiAgentBuffers& b) {
    CudaEnvLaunch<E>::check(kernels::cuda_ma_env_step<E>(p, b, nullptr), "multi-agent env step");
  };
  MultiAgentCudaHooks<E>::reset = [](const typename E::Params& p, const kernels::MultiAgentBuffers& b) {
    CudaEnvLaunch<E>::check(kernels::cuda_ma_env_reset<E>(p, b, nullptr), "multi-agent env reset");
  };
}

}  // namespace flotilla::envs
