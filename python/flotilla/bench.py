"""python -m flotilla.bench: env steps a second from Python against the same batch stepped in C++.

Both loops step one batch with the same pre-drawn random valid actions (16 batches, cycled), in
this process, taking turns (C++, Python, C++, Python, ...) so that a noisy machine affects both;
the figure of each is its best turn. The C++ loop is the one `flotilla bench env` times.
"""

import argparse
import json
import time

import numpy as np

from . import make_vec


def random_actions(space, num_envs, rng):
    if hasattr(space, "nvec"):
        return rng.integers(0, space.nvec, size=(num_envs,) + space.nvec.shape).astype(np.int64)
    if hasattr(space, "n"):
        return rng.integers(0, space.n, size=num_envs).astype(np.int64)
    low = np.where(np.isfinite(space.low), space.low, -1.0)
    high = np.where(np.isfinite(space.high), space.high, 1.0)
    return rng.uniform(low, high, size=(num_envs,) + space.shape).astype(np.float32)


def python_steps_per_second(env, actions, seconds):
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(64):
            env.step(actions[steps % len(actions)])
            steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * env.num_envs / elapsed


def measure(env_id, num_envs, threads, seconds, turns):
    env = make_vec(env_id, num_envs, threads=threads, seed=1)
    if not hasattr(env, "single_action_space"):
        raise SystemExit(f"bench: {env_id} is multi-agent; this bench times single-agent envs")
    rng = np.random.default_rng(0)
    actions = [random_actions(env.single_action_space, num_envs, rng) for _ in range(16)]
    env.reset()
    python_steps_per_second(env, actions, 0.2)  # warm up
    cpp, py = [], []
    for _ in range(turns):
        cpp.append(env._env.cpp_steps_per_second(actions, seconds))
        py.append(python_steps_per_second(env, actions, seconds))
    return {"env": env_id, "num_envs": num_envs, "threads": threads, "seconds_per_turn": seconds, "turns": turns,
            "cpp_steps_per_second": max(cpp), "python_steps_per_second": max(py), "ratio": max(py) / max(cpp),
            "python_overhead_us_per_step": (num_envs / max(py) - num_envs / max(cpp)) * 1e6}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m flotilla.bench", description=__doc__.splitlines()[0])
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0, help="length of each turn")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    r = measure(a.env, a.num_envs, a.threads, a.seconds, a.turns)
    if a.json:
        print(json.dumps(r))
        return
    print(f"env: {r['env']}  num_envs: {r['num_envs']}  threads: {r['threads']}  (best of {r['turns']} turns of {r['seconds_per_turn']} s)")
    print(f"C++ loop:    {r['cpp_steps_per_second']:,.0f} steps/s")
    print(f"Python loop: {r['python_steps_per_second']:,.0f} steps/s")
    print(f"ratio: {r['ratio']:.3f}  (Python overhead {r['python_overhead_us_per_step']:.1f} us per batch step)")


if __name__ == "__main__":
    main()
