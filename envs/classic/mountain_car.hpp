#pragma once
// MountainCar-v0 and MountainCarContinuous-v0 with Gymnasium 1.x's dynamics. The discrete car
// keeps its state in double; the continuous one stores it as float32 after every step, as
// Gymnasium does, and so do we.
#include <cmath>

#include "kernels/env_batch.hpp"

namespace flotilla::envs {

struct MountainCarCommon {
  static constexpr int kStateDim = 2;  // position, velocity
  static constexpr int kObsDim = 2;
  static constexpr double kMinPosition = -1.2;
  static constexpr double kMaxPosition = 0.6;
  static constexpr double kMaxSpeed = 0.07;

  FLOTILLA_HD static void reset_state(kernels::StateRef s, kernels::EnvRng& rng) {
    s[0] = rng.uniform(-0.6, -0.4);
    s[1] = 0.0;
  }
  FLOTILLA_HD static void observe_state(kernels::StateRef s, kernels::ObsRef obs) {
    obs[0] = static_cast<float>(s[0]);
    obs[1] = static_cast<float>(s[1]);
  }
};

struct MountainCar : MountainCarCommon {
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::Discrete;
  static constexpr int kActionDim = 1;
  static constexpr int64_t kNumActions = 3;
  using Action = int64_t;
  struct Params {
    double goal_velocity = 0.0;
  };
  static constexpr double kGoalPosition = 0.5;
  static constexpr double kForce = 0.001;
  static constexpr double kGravity = 0.0025;

  FLOTILLA_HD static void reset(const Params&, kernels::StateRef s, kernels::EnvRng& rng) { reset_state(s, rng); }
  FLOTILLA_HD static void step(const Params& p, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    double position = s[0], velocity = s[1];
    const double push = a == 0 ? -kForce : (a == 2 ? kForce : 0.0);  // (action - 1) * force
    velocity += push + cos(3 * position) * (-kGravity);
    velocity = fmin(fmax(velocity, -kMaxSpeed), kMaxSpeed);
    position += velocity;
    position = fmin(fmax(position, kMinPosition), kMaxPosition);
    velocity = (position == kMinPosition && velocity < 0) ? 0.0 : velocity;
    terminated = position >= kGoalPosition && velocity >= p.goal_velocity;
    reward = -1.0f;
    s[0] = position;
    s[1] = velocity;
  }
  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) { observe_state(s, obs); }
};

struct MountainCarContinuous : MountainCarCommon {
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::Box;
  static constexpr int kActionDim = 1;
  static constexpr int64_t kNumActions = 0;
  using Action = const float*;
  struct Params {
    double goal_velocity = 0.0;
  };
  static constexpr double kGoalPosition = 0.45;
  static constexpr double kPower = 0.0015;

  FLOTILLA_HD static void reset(const Params&, kernels::StateRef s, kernels::EnvRng& rng) { reset_state(s, rng); }
  FLOTILLA_HD static void step(const Params& p, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    double position = s[0], velocity = s[1];
    const double force = fmin(fmax(static_cast<double>(a[0]), -1.0), 1.0);
    velocity += force * kPower - 0.0025 * cos(3 * position);
    velocity = velocity > kMaxSpeed ? kMaxSpeed : velocity;
    velocity = velocity < -kMaxSpeed ? -kMaxSpeed : velocity;
    position += velocity;
    position = position > kMaxPosition ? kMaxPosition : position;
    position = position < kMinPosition ? kMinPosition : position;
    velocity = (position == kMinPosition && velocity < 0) ? 0.0 : velocity;
    terminated = position >= kGoalPosition && velocity >= p.goal_velocity;
    double r = terminated ? 100.0 : 0.0;
    r -= static_cast<double>(a[0]) * static_cast<double>(a[0]) * 0.1;
    reward = static_cast<float>(r);
    s[0] = static_cast<float>(position);
    s[1] = static_cast<float>(velocity);
  }
  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) { observe_state(s, obs); }
};

}  // namespace flotilla::envs
