#pragma once
// Acrobot-v1 with Gymnasium 1.x's dynamics: the book's equations of motion, one fourth-order
// Runge-Kutta step of dt = 0.2, angles wrapped to [-pi, pi], velocities bounded to 4 pi and 9 pi,
// reward -1 per step and 0 on reaching the line. The operations follow Gymnasium's order so a
// trajectory stays with Gymnasium's as long as double precision allows.
#include <cmath>

#include "kernels/env_batch.hpp"

namespace flotilla::envs {

struct Acrobot {
  static constexpr int kStateDim = 4;  // theta1, theta2, dtheta1, dtheta2
  static constexpr int kObsDim = 6;    // cos t1, sin t1, cos t2, sin t2, dt1, dt2
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::Discrete;
  static constexpr int kActionDim = 1;
  static constexpr int64_t kNumActions = 3;
  using Action = int64_t;
  struct Params {
    bool nips_dynamics = false;  // Gymnasium's book_or_nips = "nips"
  };

  static constexpr double kPi = 3.141592653589793;
  static constexpr double kDt = 0.2;
  static constexpr double kMaxVel1 = 4 * kPi;
  static constexpr double kMaxVel2 = 9 * kPi;

  FLOTILLA_HD static void reset(const Params&, kernels::StateRef s, kernels::EnvRng& rng) {
    // Gymnasium draws the initial state as float32.
    for (int k = 0; k < 4; ++k) s[k] = static_cast<double>(static_cast<float>(rng.uniform(-0.1, 0.1)));
  }

  FLOTILLA_HD static void dsdt(const Params& p, const double y[4], double torque, double out[4]) {
    constexpr double m1 = 1.0, m2 = 1.0, l1 = 1.0, lc1 = 0.5, lc2 = 0.5, I1 = 1.0, I2 = 1.0, g = 9.8;
    const double theta1 = y[0], theta2 = y[1], dtheta1 = y[2], dtheta2 = y[3];
    const double d1 = m1 * (lc1 * lc1) + m2 * ((l1 * l1) + (lc2 * lc2) + 2 * l1 * lc2 * cos(theta2)) + I1 + I2;
    const double d2 = m2 * ((lc2 * lc2) + l1 * lc2 * cos(theta2)) + I2;
    const double phi2 = m2 * lc2 * g * cos(theta1 + theta2 - kPi / 2.0);
    const double phi1 = -m2 * l1 * lc2 * (dtheta2 * dtheta2) * sin(theta2) -
                        2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2) +
                        (m1 * lc1 + m2 * l1) * g * cos(theta1 - kPi / 2) + phi2;
    // The book's equation has one more term than the NIPS paper's. Multiplying it by 1 or 0 keeps
    // both exact and leaves no choice inside the loop over envs, which must vectorize.
    const double book = p.nips_dynamics ? 0.0 : 1.0;
    const double book_term = book * (m2 * l1 * lc2 * (dtheta1 * dtheta1) * sin(theta2));
    const double ddtheta2 = (torque + d2 / d1 * phi1 - book_term - phi2) / (m2 * (lc2 * lc2) + I2 - (d2 * d2) / d1);
    out[0] = dtheta1;
    out[1] = dtheta2;
    out[2] = -(d2 * ddtheta2 + phi1) / d1;
    out[3] = ddtheta2;
  }

  // Gymnasium's wrap() subtracts or adds the period one step at a time while out of range. A
  // step moves an angle by less than two periods (velocities are bounded), so a fixed number of
  // conditional steps gives the same result, with no loop to stop vectorization.
  FLOTILLA_HD static double wrap(double x, double m, double M) {
    const double diff = M - m;
    for (int k = 0; k < 3; ++k) x = x > M ? x - diff : x;
    for (int k = 0; k < 3; ++k) x = x < m ? x + diff : x;
    return x;
  }
  FLOTILLA_HD static double bound(double x, double m, double M) { return fmin(fmax(x, m), M); }

  FLOTILLA_HD static void step(const Params& p, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    const double torque = a == 0 ? -1.0 : (a == 2 ? 1.0 : 0.0);  // actions 0, 1, 2 -> -1, 0, +1
    double y0[4] = {s[0], s[1], s[2], s[3]}, k1[4], k2[4], k3[4], k4[4], y[4];
    constexpr double dt = kDt, dt2 = kDt / 2.0;
    dsdt(p, y0, torque, k1);
    for (int k = 0; k < 4; ++k) y[k] = y0[k] + dt2 * k1[k];
    dsdt(p, y, torque, k2);
    for (int k = 0; k < 4; ++k) y[k] = y0[k] + dt2 * k2[k];
    dsdt(p, y, torque, k3);
    for (int k = 0; k < 4; ++k) y[k] = y0[k] + dt * k3[k];
    dsdt(p, y, torque, k4);
    double ns[4];
    for (int k = 0; k < 4; ++k) ns[k] = y0[k] + dt / 6.0 * (k1[k] + 2 * k2[k] + 2 * k3[k] + k4[k]);
    s[0] = wrap(ns[0], -kPi, kPi);
    s[1] = wrap(ns[1], -kPi, kPi);
    s[2] = bound(ns[2], -kMaxVel1, kMaxVel1);
    s[3] = bound(ns[3], -kMaxVel2, kMaxVel2);
    terminated = -cos(s[0]) - cos(s[1] + s[0]) > 1.0;
    reward = terminated ? 0.0f : -1.0f;
  }

  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) {
    obs[0] = static_cast<float>(cos(s[0]));
    obs[1] = static_cast<float>(sin(s[0]));
    obs[2] = static_cast<float>(cos(s[1]));
    obs[3] = static_cast<float>(sin(s[1]));
    obs[4] = static_cast<float>(s[2]);
    obs[5] = static_cast<float>(s[3]);
  }
};

}  // namespace flotilla::envs
