// Registration of the classic-control envs with Gymnasium's ids, spaces and limits.
#include <limits>

#include "envs/batched_env.hpp"
#include "envs/classic/acrobot.hpp"
#include "envs/classic/cartpole.hpp"
#include "envs/classic/mountain_car.hpp"
#include "envs/classic/pendulum.hpp"

namespace flotilla::envs {

#if FLOTILLA_WITH_CUDA
void install_classic_cuda();  // envs/classic/classic_cuda.cu
#endif

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kFloatMax = std::numeric_limits<float>::max();
}  // namespace

void register_classic_envs() {
  register_batched_env<CartPole>(
      {"CartPole-v1", "balance a pole on a cart; +1 per step", 
       Space::box({-4.8, -kFloatMax, -CartPole::kThetaThreshold * 2, -kFloatMax},
                  {4.8, kFloatMax, CartPole::kThetaThreshold * 2, kFloatMax}),
       Space::discrete(2), 500, {"x", "x_dot", "theta", "theta_dot"}},
      [](const core::ConfigView& v) {
        return CartPole::Params{v.get<bool>("sutton_barto_reward", false)};
      });
  register_batched_env<Acrobot>(
      {"Acrobot-v1", "swing a two-link arm above the line; -1 per step",
       Space::box({-1, -1, -1, -1, -Acrobot::kMaxVel1, -Acrobot::kMaxVel2},
                  {1, 1, 1, 1, Acrobot::kMaxVel1, Acrobot::kMaxVel2}),
       Space::discrete(3), 500, {"theta1", "theta2", "dtheta1", "dtheta2"}},
      [](const core::ConfigView& v) { return Acrobot::Params{v.get<bool>("nips_dynamics", false)}; });
  register_batched_env<MountainCar>(
      {"MountainCar-v0", "drive an underpowered car up a hill; -1 per step",
       Space::box({-1.2, -0.07}, {0.6, 0.07}), Space::discrete(3), 200, {"position", "velocity"}},
      [](const core::ConfigView& v) { return MountainCar::Params{v.get<double>("goal_velocity", 0.0)}; });
  register_batched_env<MountainCarContinuous>(
      {"MountainCarContinuous-v0", "the mountain car with a continuous force; +100 at the goal",
       Space::box({-1.2, -0.07}, {0.6, 0.07}), Space::box({-1.0}, {1.0}), 999, {"position", "velocity"}},
      [](const core::ConfigView& v) { return MountainCarContinuous::Params{v.get<double>("goal_velocity", 0.0)}; });
  register_batched_env<Pendulum>(
      {"Pendulum-v1", "swing a pendulum up and hold it; reward -(angle^2 + ...)",
       Space::box({-1.0, -1.0, -8.0}, {1.0, 1.0, 8.0}), Space::box({-2.0}, {2.0}), 200, {"theta", "theta_dot"}},
      [](const core::ConfigView& v) { return Pendulum::Params{v.get<double>("g", 10.0, core::greater_than(0.0))}; });
#if FLOTILLA_WITH_CUDA
  install_classic_cuda();
#endif
  (void)kInf;
}

}  // namespace flotilla::envs
