#!/usr/bin/python3
"""Times MPE2's parallel envs against Flotilla's batched MPE on this machine, scenario by scenario.

    /usr/bin/python3 scripts/mpe2_speed.py MPE2_DIR PETTINGZOO_DIR GYMNASIUM_DIR [FLOTILLA_BINARY]

The three directories hold the `mpe2`, `pettingzoo` and `gymnasium` packages (source checkouts).
Only numpy is needed beyond them (Debian's python3-numpy, python3-cloudpickle and
python3-typing-extensions); pygame, which MPE2 uses only to render, is replaced by a stand-in.
MPE2 runs one env, as its users step it: `parallel_env().step({agent: action})` with random
discrete actions, for `SECONDS` seconds. Flotilla runs `bench env --env mpe/NAME --num-envs 4096
--threads 1`. Each scenario alternates the two `ROUNDS` times and prints the medians and their ratio.
"""
import importlib
import json
import statistics
import subprocess
import sys
import time
import types

SECONDS = 2.0
ROUNDS = 3
SCENARIOS = [("simple_v3", "simple"), ("simple_spread_v3", "simple_spread"), ("simple_tag_v3", "simple_tag"),
             ("simple_adversary_v3", "simple_adversary"), ("simple_push_v3", "simple_push"),
             ("simple_reference_v3", "simple_reference"), ("simple_speaker_listener_v4", "simple_speaker_listener"),
             ("simple_crypto_v3", "simple_crypto"), ("simple_world_comm_v3", "simple_world_comm")]


class _Anything:
    """Stands for any pygame class, function or value: MPE2 sets up fonts even when not rendering."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


def _install_stubs():
    pygame = _StubModule("pygame")
    pygame.__path__ = []
    pygame.freetype = _StubModule("pygame.freetype")
    sys.modules["pygame"], sys.modules["pygame.freetype"] = pygame, pygame.freetype
    notifications = types.ModuleType("farama_notifications")
    notifications.notifications = {}
    sys.modules.setdefault("farama_notifications", notifications)


def mpe2_rate(module_name):
    import numpy as np

    env = importlib.import_module(f"mpe2.{module_name}").parallel_env(max_cycles=10**9)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    batches = [{a: int(rng.integers(env.action_space(a).n)) for a in env.agents} for _ in range(64)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        for actions in batches:
            env.step(actions)
        steps += len(batches)
    return steps / (time.perf_counter() - start)


def flotilla_rate(binary, name):
    out = subprocess.run([binary, "bench", "env", "--env", f"mpe/{name}", "--num-envs", "4096", "--threads", "1", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["steps_per_second"]


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    sys.path[:0] = sys.argv[1:4]
    binary = sys.argv[4] if len(sys.argv) == 5 else "build/release/bin/flotilla"
    _install_stubs()
    print(f"{'scenario':26} {'MPE2 env steps/s':>17} {'Flotilla env steps/s':>21} {'ratio':>7}")
    for module_name, name in SCENARIOS:
        ours, theirs = [], []
        for _ in range(ROUNDS):
            theirs.append(mpe2_rate(module_name))
            ours.append(flotilla_rate(binary, name))
        a, b = statistics.median(theirs), statistics.median(ours)
        print(f"{name:26} {a:17,.0f} {b:21,.0f} {b / a:6,.0f}x", flush=True)


if __name__ == "__main__":
    main()
