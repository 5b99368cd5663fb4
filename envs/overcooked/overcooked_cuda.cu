// Overcooked's CUDA backend: the same step functions as the CPU, one thread per env.
#include "envs/cuda_env.cuh"
#include "envs/overcooked/overcooked.hpp"

namespace flotilla::envs {

void install_overcooked_cuda() { install_cuda_multi_agent_env<overcooked::Overcooked>(); }

}  // namespace flotilla::envs
