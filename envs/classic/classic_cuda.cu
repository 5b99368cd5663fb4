// The classic-control envs' CUDA backend: the same step functions as the CPU, one thread per env.
#include "envs/classic/acrobot.hpp"
#include "envs/classic/cartpole.hpp"
#include "envs/classic/mountain_car.hpp"
#include "envs/classic/pendulum.hpp"
#include "envs/cuda_env.cuh"

namespace flotilla::envs {

void install_classic_cuda() {
  install_cuda_env<CartPole>();
  install_cuda_env<Acrobot>();
  install_cuda_env<MountainCar>();
  install_cuda_env<MountainCarContinuous>();
  install_cuda_env<Pendulum>();
}

}  // namespace flotilla::envs
