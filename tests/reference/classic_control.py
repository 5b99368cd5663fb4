#!/usr/bin/env python3
"""Reference trajectories for Flotilla's classic-control envs, for tests/envs_test.cpp.

An independent scalar implementation of the published equations of Gymnasium 1.x's
classic-control environments (CartPole-v1, Acrobot-v1, MountainCar-v0, MountainCarContinuous-v0,
Pendulum-v1), in plain Python with the math module. From fixed initial states and fixed action
sequences it writes tests/data/classic_traces.json: per step the observation, reward and
termination, which the C++ envs must reproduce to 1e-4.

    python3 tests/reference/classic_control.py > tests/data/classic_traces.json
"""
import json
import math
import random


def cartpole(state, action):
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    x, x_dot, theta, theta_dot = state
    force = force_mag if action == 1 else -force_mag
    c, s = math.cos(theta), math.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * s) / total_mass
    thetaacc = (gravity * s - c * temp) / (length * (4.0 / 3.0 - masspole * c**2 / total_mass))
    xacc = temp - polemass_length * thetaacc * c / total_mass
    x, x_dot, theta, theta_dot = x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc
    threshold = 12 * 2 * math.pi / 360
    done = x < -2.4 or x > 2.4 or theta < -threshold or theta > threshold
    new = [x, x_dot, theta, theta_dot]
    return new, list(new), 1.0, done


def acrobot_derivs(y, torque):
    m1 = m2 = l1 = 1.0
    lc1 = lc2 = 0.5
    i1 = i2 = 1.0
    g = 9.8
    t1, t2, dt1, dt2 = y
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * math.cos(t2)) + i1 + i2
    d2 = m2 * (lc2**2 + l1 * lc2 * math.cos(t2)) + i2
    phi2 = m2 * lc2 * g * math.cos(t1 + t2 - math.pi / 2.0)
    phi1 = (-m2 * l1 * lc2 * dt2**2 * math.sin(t2) - 2 * m2 * l1 * lc2 * dt2 * dt1 * math.sin(t2)
            + (m1 * lc1 + m2 * l1) * g * math.cos(t1 - math.pi / 2) + phi2)
    ddt2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dt1**2 * math.sin(t2) - phi2) / (m2 * lc2**2 + i2 - d2**2 / d1)
    ddt1 = -(d2 * ddt2 + phi1) / d1
    return [dt1, dt2, ddt1, ddt2]


def acrobot(state, action):
    dt = 0.2
    torque = [-1.0, 0.0, 1.0][action]
    y0 = list(state)
    k1 = acrobot_derivs(y0, torque)
    k2 = acrobot_derivs([a + dt / 2 * b for a, b in zip(y0, k1)], torque)
    k3 = acrobot_derivs([a + dt / 2 * b for a, b in zip(y0, k2)], torque)
    k4 = acrobot_derivs([a + dt * b for a, b in zip(y0, k3)], torque)
    ns = [y + dt / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4)]

    def wrap(x, lo, hi):
        while x > hi:
            x -= hi - lo
        while x < lo:
            x += hi - lo
        return x

    ns[0] = wrap(ns[0], -math.pi, math.pi)
    ns[1] = wrap(ns[1], -math.pi, math.pi)
    ns[2] = min(max(ns[2], -4 * math.pi), 4 * math.pi)
    ns[3] = min(max(ns[3], -9 * math.pi), 9 * math.pi)
    done = -math.cos(ns[0]) - math.cos(ns[1] + ns[0]) > 1.0
    obs = [math.cos(ns[0]), math.sin(ns[0]), math.cos(ns[1]), math.sin(ns[1]), ns[2], ns[3]]
    return ns, obs, 0.0 if done else -1.0, done


def mountain_car(state, action):
    position, velocity = state
    velocity += (action - 1) * 0.001 + math.cos(3 * position) * (-0.0025)
    velocity = min(max(velocity, -0.07), 0.07)
    position += velocity
    position = min(max(position, -1.2), 0.6)
    if position == -1.2 and velocity < 0:
        velocity = 0.0
    done = position >= 0.5 and velocity >= 0.0
    return [position, velocity], [position, velocity], -1.0, done


def f32(x):
    import struct
    return struct.unpack("f", struct.pack("f", x))[0]


def mountain_car_continuous(state, action):
    position, velocity = state
    a = f32(action[0])
    force = min(max(a, -1.0), 1.0)
    velocity += force * 0.0015 - 0.0025 * math.cos(3 * position)
    velocity = min(max(velocity, -0.07), 0.07)
    position += velocity
    position = min(max(position, -1.2), 0.6)
    if position == -1.2 and velocity < 0:
        velocity = 0.0
    done = position >= 0.45 and velocity >= 0.0
    reward = (100.0 if done else 0.0) - a**2 * 0.1
    new = [f32(position), f32(velocity)]  # the env stores its state as float32
    return new, list(new), reward, done


def pendulum(state, action):
    th, thdot = state
    g, m, length, dt = 10.0, 1.0, 1.0, 0.05
    u = min(max(f32(action[0]), -2.0), 2.0)
    normalized = ((th + math.pi) % (2 * math.pi)) - math.pi
    costs = normalized**2 + 0.1 * thdot**2 + 0.001 * u**2
    newthdot = thdot + (3 * g / (2 * length) * math.sin(th) + 3.0 / (m * length**2) * u) * dt
    newthdot = min(max(newthdot, -8.0), 8.0)
    newth = th + newthdot * dt
    return [newth, newthdot], [math.cos(newth), math.sin(newth), newthdot], -costs, False


ENVS = {
    "CartPole-v1": (cartpole, lambda r: r.randrange(2), lambda s: list(s)),
    "Acrobot-v1": (acrobot, lambda r: r.randrange(3),
                   lambda s: [math.cos(s[0]), math.sin(s[0]), math.cos(s[1]), math.sin(s[1]), s[2], s[3]]),
    "MountainCar-v0": (mountain_car, lambda r: r.randrange(3), lambda s: list(s)),
    "MountainCarContinuous-v0": (mountain_car_continuous, lambda r: [round(r.uniform(-1.2, 1.2), 3)], lambda s: list(s)),
    "Pendulum-v1": (pendulum, lambda r: [round(r.uniform(-2.5, 2.5), 3)],
                    lambda s: [math.cos(s[0]), math.sin(s[0]), s[1]]),
}

# Initial states in Gymnasium's env.unwrapped.state order, and how many steps to take.
CASES = [
    ("CartPole-v1", [0.01, -0.02, 0.03, 0.015], 150, "balanced", True),
    ("CartPole-v1", [0.0, 0.0, 0.05, 0.0], 60, "random", False),
    ("Acrobot-v1", [0.05, -0.08, 0.02, 0.03], 120, "random", False),
    ("Acrobot-v1", [1.0, 0.5, -0.3, 1.0], 120, "random", False),
    ("MountainCar-v0", [-0.5, 0.0], 200, "random", False),
    ("MountainCar-v0", [-1.1, -0.06], 120, "random", False),
    ("MountainCarContinuous-v0", [-0.52, 0.0], 150, "random", False),
    ("MountainCarContinuous-v0", [0.3, 0.05], 150, "random", False),
    ("Pendulum-v1", [2.5, -0.5], 150, "random", False),
    ("Pendulum-v1", [-3.0, 6.0], 150, "random", False),
]


def balancing_action(state):
    # A simple controller that keeps the pole up, so a CartPole trace lasts well past 100 steps.
    x, x_dot, theta, theta_dot = state
    return 1 if theta + 0.5 * theta_dot + 0.05 * x + 0.1 * x_dot > 0 else 0


def main():
    rng = random.Random(2026)
    out = []
    for env_id, init, steps, policy, _ in CASES:
        step, sample, observe = ENVS[env_id]
        state = list(init)
        trace = {"env": env_id, "init_state": init, "obs0": observe(state), "steps": []}
        for _ in range(steps):
            action = balancing_action(state) if policy == "balanced" else sample(rng)
            state, obs, reward, done = step(state, action)
            trace["steps"].append({"action": action, "obs": obs, "reward": reward, "terminated": done})
            if done:
                break
        out.append(trace)
    print(json.dumps(out, indent=None))


if __name__ == "__main__":
    main()
