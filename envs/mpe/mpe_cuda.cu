// The MPE scenarios' CUDA backend: the same step functions as the CPU, one thread per env.
#include "envs/cuda_env.cuh"
#include "envs/mpe/mpe.hpp"

namespace flotilla::envs {

void install_mpe_cuda() { install_cuda_multi_agent_env<mpe::Mpe>(); }

}  // namespace flotilla::envs
