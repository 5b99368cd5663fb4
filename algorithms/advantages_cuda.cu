#include <string>

#include "core/error.hpp"
#include "kernels/gae.cuh"

namespace flotilla::algorithms {

void gae_on_gpu(const kernels::GaeArgs& args) {
  cudaError_t err = kernels::gae_cuda(args, nullptr);
  if (err != cudaSuccess) throw Error(std::string("CUDA GAE failed: ") + cudaGetErrorString(err));
}

}  // namespace flotilla::algorithms
