#pragma once
// CartPole-v1 with Gymnasium 1.x's dynamics: Euler integration at tau = 0.02, termination past
// 12 degrees or 2.4 m, reward 1 per step (or Sutton and Barto's 0 / -1 on request). State and
// arithmetic in double, as Gymnasium computes them; observations in float32.
#include <cmath>

#include "kernels/env_batch.hpp"

namespace flotilla::envs {

struct CartPole {
  static constexpr int kStateDim = 4;  // x, x_dot, theta, theta_dot
  static constexpr int kObsDim = 4;
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::Discrete;
  static constexpr int kActionDim = 1;
  static constexpr int64_t kNumActions = 2;
  using Action = int64_t;
  struct Params {
    bool sutton_barto_reward = false;
  };

  static constexpr double kGravity = 9.8;
  static constexpr double kMassCart = 1.0;
  static constexpr double kMassPole = 0.1;
  static constexpr double kTotalMass = kMassPole + kMassCart;
  static constexpr double kLength = 0.5;  // half the pole's length
  static constexpr double kPoleMassLength = kMassPole * kLength;
  static constexpr double kForceMag = 10.0;
  static constexpr double kTau = 0.02;
  static constexpr double kThetaThreshold = 12 * 2 * 3.141592653589793 / 360;
  static constexpr double kXThreshold = 2.4;

  FLOTILLA_HD static void reset(const Params&, kernels::StateRef s, kernels::EnvRng& rng) {
    for (int k = 0; k < 4; ++k) s[k] = rng.uniform(-0.05, 0.05);
  }

  FLOTILLA_HD static void step(const Params& p, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    const double x = s[0], x_dot = s[1], theta = s[2], theta_dot = s[3];
    const double force = a == 1 ? kForceMag : -kForceMag;
    const double costheta = cos(theta), sintheta = sin(theta);
    const double temp = (force + kPoleMassLength * (theta_dot * theta_dot) * sintheta) / kTotalMass;
    const double thetaacc = (kGravity * sintheta - costheta * temp) /
                            (kLength * (4.0 / 3.0 - kMassPole * (costheta * costheta) / kTotalMass));
    const double xacc = temp - kPoleMassLength * thetaacc * costheta / kTotalMass;
    const double nx = x + kTau * x_dot;
    const double ntheta = theta + kTau * theta_dot;
    s[0] = nx;
    s[1] = x_dot + kTau * xacc;
    s[2] = ntheta;
    s[3] = theta_dot + kTau * thetaacc;
    terminated = (nx < -kXThreshold) | (nx > kXThreshold) | (ntheta < -kThetaThreshold) | (ntheta > kThetaThreshold);
    // Written as arithmetic rather than nested choices so the loop over envs vectorizes.
    const float ended = terminated ? 1.0f : 0.0f;
    const float sutton = p.sutton_barto_reward ? 1.0f : 0.0f;
    reward = 1.0f - sutton * (1.0f + ended);  // 1 per step; Sutton-Barto: 0 per step, -1 at the end
  }

  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) {
    obs[0] = static_cast<float>(s[0]);
    obs[1] = static_cast<float>(s[1]);
    obs[2] = static_cast<float>(s[2]);
    obs[3] = static_cast<float>(s[3]);
  }
};

}  // namespace flotilla::envs
