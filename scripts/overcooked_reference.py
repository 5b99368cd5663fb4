#!/usr/bin/python3
"""Plays overcooked_ai's kitchens with random actions and writes what the original gives.

    /usr/bin/python3 scripts/overcooked_reference.py OVERCOOKED_SRC_DIR tests/data/overcooked_reference.json

OVERCOOKED_SRC_DIR is the `src` directory of a checkout of HumanCompatibleAI's overcooked_ai (the
directory holding `overcooked_ai_py`). Only numpy is needed (Debian's python3-numpy): the
package's Gymnasium registration is replaced by an empty stand-in, since the gridworld
(OvercookedGridworld.get_state_transition and lossless_state_encoding) uses none of it.

Each case plays one 400-step episode from the layout's start with random joint actions (interact
drawn more often than the rest, so pots fill and soups get cooked), and records per step the
actions, the delivery (sparse) reward, each cook's shaping reward and each cook's lossless
encoding as its non-zero entries (flat index in x, y, layer order, and value; the terrain layers
only at the start).
tests/overcooked_test.cpp replays every case with Flotilla's Overcooked.
"""
import json
import sys
import types

import numpy as np

LAYOUTS = [
    # (Flotilla id, overcooked_ai layout, old_dynamics, seed)
    ("overcooked/cramped_room", "cramped_room", True, 1),
    ("overcooked/cramped_room", "cramped_room", False, 2),
    ("overcooked/asymmetric_advantages", "asymmetric_advantages", True, 3),
    ("overcooked/coordination_ring", "coordination_ring", True, 4),
    ("overcooked/forced_coordination", "forced_coordination", True, 5),
    ("overcooked/counter_circuit", "counter_circuit_o_1order", True, 6),
]
STEPS = 400
INTERACT_SHARE = 0.4


def import_original(src):
    """overcooked_ai's Action and OvercookedGridworld from the checkout at `src`, with its
    Gymnasium registration stubbed out."""
    registration = types.ModuleType("gymnasium.envs.registration")
    registration.register = lambda *args, **kwargs: None
    for name in ("gymnasium", "gymnasium.envs"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["gymnasium.envs.registration"] = registration
    sys.path.insert(0, src)
    from overcooked_ai_py.mdp.actions import Action
    from overcooked_ai_py.mdp.overcooked_mdp import OvercookedGridworld
    return Action, OvercookedGridworld


def main():
    src, out = sys.argv[1], sys.argv[2]
    Action, OvercookedGridworld = import_original(src)

    cases = []
    for env_id, layout, old_dynamics, seed in LAYOUTS:
        mdp = OvercookedGridworld.from_layout_name(layout, old_dynamics=old_dynamics)
        state = mdp.get_standard_start_state()
        rng = np.random.default_rng(seed)

        def encode(s, terrain=True):
            # The terrain layers (10-15) never change: the start's encoding has them, steps leave them out.
            out = []
            for e in mdp.lossless_state_encoding(s, horizon=STEPS):
                if not terrain:
                    e = e.copy()
                    e[:, :, 10:16] = 0
                nz = np.flatnonzero(e)
                out.append([[int(i), int(v)] for i, v in zip(nz, e.ravel()[nz])])
            return out

        steps = []
        for _ in range(STEPS):
            joint = [
                5 if rng.random() < INTERACT_SHARE else int(rng.integers(0, 5)) for _ in range(2)
            ]
            state, info = mdp.get_state_transition(state, [Action.INDEX_TO_ACTION[a] for a in joint])
            steps.append({
                "actions": joint,
                "sparse": int(sum(info["sparse_reward_by_agent"])),
                "shaped": [int(r) for r in info["shaped_reward_by_agent"]],
                "obs": encode(state, terrain=False),
            })
        cases.append({"env": env_id, "old_dynamics": old_dynamics, "start_obs": encode(mdp.get_standard_start_state()),
                      "steps": steps})
        delivered = sum(s["sparse"] for s in steps) // 20
        print(f"{env_id} old_dynamics={old_dynamics}: {delivered} soups, "
              f"{sum(sum(s['shaped']) for s in steps)} shaping", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"source": "overcooked_ai (HumanCompatibleAI), stepped by scripts/overcooked_reference.py",
                   "cases": cases}, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
