#pragma once
// Pendulum-v1 with Gymnasium 1.x's dynamics: semi-implicit Euler at dt = 0.05, torque clipped to
// [-2, 2], speed to [-8, 8], reward -(angle^2 + 0.1 speed^2 + 0.001 torque^2), never terminates.
#include <cmath>

#include "kernels/env_batch.hpp"

namespace flotilla::envs {

struct Pendulum {
  static constexpr int kStateDim = 2;  // theta, theta_dot
  static constexpr int kObsDim = 3;    // cos theta, sin theta, theta_dot
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::Box;
  static constexpr int kActionDim = 1;
  static constexpr int64_t kNumActions = 0;
  using Action = const float*;
  struct Params {
    double g = 10.0;
  };
  static constexpr double kPi = 3.141592653589793;
  static constexpr double kMaxSpeed = 8.0;
  static constexpr float kMaxTorque = 2.0f;
  static constexpr double kDt = 0.05;
  static constexpr double kMass = 1.0;
  static constexpr double kLength = 1.0;

  FLOTILLA_HD static void reset(const Params&, kernels::StateRef s, kernels::EnvRng& rng) {
    s[0] = rng.uniform(-kPi, kPi);
    s[1] = rng.uniform(-1.0, 1.0);
  }
  // Python's ((x + pi) % (2 pi)) - pi, the remainder taking the divisor's sign, through floor()
  // so it vectorizes; it differs from Python's exact remainder by rounding (about 1e-15) and
  // only enters the reward.
  FLOTILLA_HD static double angle_normalize(double x) {
    const double y = x + kPi;
    return y - 2 * kPi * floor(y / (2 * kPi)) - kPi;
  }
  FLOTILLA_HD static void step(const Params& p, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    const double th = s[0], thdot = s[1];
    const float u = fminf(fmaxf(a[0], -kMaxTorque), kMaxTorque);  // the action stays float32
    const double an = angle_normalize(th);
    const double costs = an * an + 0.1 * (thdot * thdot) + static_cast<double>(0.001f * (u * u));
    double newthdot = thdot + (3 * p.g / (2 * kLength) * sin(th) + 3.0 / (kMass * (kLength * kLength)) * u) * kDt;
    newthdot = fmin(fmax(newthdot, -kMaxSpeed), kMaxSpeed);
    s[0] = th + newthdot * kDt;
    s[1] = newthdot;
    reward = static_cast<float>(-costs);
    terminated = false;
  }
  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) {
    obs[0] = static_cast<float>(cos(s[0]));
    obs[1] = static_cast<float>(sin(s[0]));
    obs[2] = static_cast<float>(s[1]);
  }
};

}  // namespace flotilla::envs
