#!/usr/bin/python3
"""Steps overcooked_ai's cramped room with random actions and Flotilla's batch, in turns.

    /usr/bin/python3 scripts/overcooked_speed.py OVERCOOKED_SRC_DIR [FLOTILLA_BIN]

OVERCOOKED_SRC_DIR is the `src` directory of an overcooked_ai checkout; only numpy is needed (the
package's Gymnasium registration is stubbed, as in scripts/overcooked_reference.py). The original
is timed on one env (OvercookedGridworld.get_state_transition, resetting every 400 steps) without
observations and with the lossless encoding of both cooks each step; Flotilla is
`flotilla bench env --env overcooked/cramped_room --num-envs 4096 --threads 1`. Three rounds,
alternating; the medians and ratios are printed.
"""
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from overcooked_reference import import_original


def original(src):
    Action, OvercookedGridworld = import_original(src)
    mdp = OvercookedGridworld.from_layout_name("cramped_room", old_dynamics=True)
    actions = Action.INDEX_TO_ACTION

    def run(seconds, encode):
        rng = np.random.default_rng(0)
        state, steps, t0 = mdp.get_standard_start_state(), 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(400):
                joint = [actions[a] for a in rng.integers(0, 6, 2)]
                state, _ = mdp.get_state_transition(state, joint)
                if encode:
                    mdp.lossless_state_encoding(state)
                steps += 1
            state = mdp.get_standard_start_state()
        return steps / (time.perf_counter() - t0)
    return run


def main():
    src = sys.argv[1]
    cli = sys.argv[2] if len(sys.argv) > 2 else "build/release/bin/flotilla"
    run = original(src)
    bare, encoded, ours = [], [], []
    for _ in range(3):
        bare.append(run(3.0, False))
        encoded.append(run(3.0, True))
        out = subprocess.run([cli, "bench", "env", "--env", "overcooked/cramped_room", "--num-envs", "4096",
                              "--threads", "1", "--json"], capture_output=True, text=True, check=True).stdout
        ours.append(json.loads(out)["steps_per_second"])
    b, e, f = statistics.median(bare), statistics.median(encoded), statistics.median(ours)
    print(f"overcooked_ai, one env, no observations:      {b:,.0f} steps/s")
    print(f"overcooked_ai, one env, lossless encoding x2: {e:,.0f} steps/s")
    print(f"Flotilla, 4096 envs, 1 thread, encodings:     {f:,.0f} steps/s")
    print(f"ratio against the original with encodings: {f / e:,.0f}x")


if __name__ == "__main__":
    main()
