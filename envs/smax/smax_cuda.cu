// The SMAX scenarios' CUDA backend: the same step functions as the CPU, one thread per env.
#include "envs/cuda_env.cuh"
#include "envs/smax/smax.hpp"

namespace flotilla::envs {

void install_smax_cuda() { install_cuda_multi_agent_env<smax::Smax>(); }

}  // namespace flotilla::envs
