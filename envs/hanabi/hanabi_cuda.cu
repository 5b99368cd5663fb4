// Hanabi's CUDA backend: the same step functions as the CPU, one thread per env.
#include "envs/cuda_env.cuh"
#include "envs/hanabi/hanabi.hpp"

namespace flotilla::envs {

void install_hanabi_cuda() { install_cuda_multi_agent_env<hanabi::Hanabi>(); }

}  // namespace flotilla::envs
