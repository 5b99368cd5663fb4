#!/usr/bin/python3
"""Steps MPE2's scenarios from random states with random actions and writes what they give.

    /usr/bin/python3 scripts/mpe2_reference.py MPE2_SOURCE_DIR tests/data/mpe2_reference.json

MPE2_SOURCE_DIR is a checkout of MPE2 (the directory holding the `mpe2` package). Only numpy is
needed (Debian's python3-numpy): Gymnasium, PettingZoo and pygame are replaced by empty stand-ins,
since the world physics, the action decoding (SimpleEnv._set_action and _execute_world_step), the
rewards and the observations use none of them. tests/multi_agent_test.cpp replays every case
with Flotilla's MPE and checks positions, velocities, observations and rewards after each step.
"""
import importlib
import json
import sys
import types

import numpy as np

CASES_PER_SCENARIO = 4
STEPS_PER_CASE = 5

# (Flotilla id, MPE2 module, constructor arguments, local_ratio, continuous actions)
SCENARIOS = [
    ("mpe/simple", "simple", {}, None, False),
    ("mpe/simple_spread", "simple_spread", {}, 0.5, False),
    ("mpe/simple_spread", "simple_spread", {}, 0.5, True),
    ("mpe/simple_tag", "simple_tag", {}, None, False),
    ("mpe/simple_adversary", "simple_adversary", {}, None, False),
    ("mpe/simple_push", "simple_push", {}, None, False),
    ("mpe/simple_reference", "simple_reference", {}, 0.5, False),
    ("mpe/simple_reference", "simple_reference", {}, 0.5, True),
    ("mpe/simple_speaker_listener", "simple_speaker_listener", {}, None, False),
    ("mpe/simple_crypto", "simple_crypto", {}, None, False),
    ("mpe/simple_world_comm", "simple_world_comm", {}, None, False),
]


class _Anything:
    """Stands for any class or function of a module MPE2 imports but these cases never use."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything


def _install_stubs():
    for name in ["pygame", "pygame.freetype", "gymnasium", "gymnasium.spaces", "gymnasium.utils",
                 "gymnasium.utils.seeding", "pettingzoo", "pettingzoo.utils", "pettingzoo.utils.wrappers",
                 "pettingzoo.utils.agent_selector", "pettingzoo.utils.conversions"]:
        sys.modules[name] = _StubModule(name)
    sys.modules["gymnasium"].spaces = sys.modules["gymnasium.spaces"]
    sys.modules["gymnasium"].utils = sys.modules["gymnasium.utils"]
    sys.modules["gymnasium.utils"].seeding = sys.modules["gymnasium.utils.seeding"]
    sys.modules["pettingzoo.utils"].wrappers = sys.modules["pettingzoo.utils.wrappers"]


def _goals(module, world):
    """The landmark indices Flotilla keeps as an env's two goal slots."""
    index = {id(l): i for i, l in enumerate(world.landmarks)}
    agents = world.agents
    if module in ("simple_adversary", "simple_push"):
        return [index[id(agents[-1].goal_a)], 0]
    if module == "simple_reference":
        return [index[id(agents[0].goal_b)], index[id(agents[1].goal_b)]]
    if module == "simple_speaker_listener":
        return [index[id(agents[0].goal_b)], 0]
    if module == "simple_crypto":
        return [index[id(agents[0].goal_a)], int(np.argmax(agents[2].key))]
    return [0, 0]


def _state(module, world):
    agents = [{"p_pos": a.state.p_pos.tolist(), "p_vel": a.state.p_vel.tolist()} for a in world.agents]
    landmarks = [{"p_pos": l.state.p_pos.tolist()} for l in world.landmarks]
    return {"agents": agents, "landmarks": landmarks, "goals": _goals(module, world)}


def _action_width(agent, world, continuous):
    moves = 5 if agent.movable else (0 if continuous else 1)
    if continuous:
        return moves + (0 if agent.silent else world.dim_c)
    return moves * (1 if agent.silent else world.dim_c)


def _case(simple_env, module, scenario_cls, local_ratio, continuous, rng):
    scenario = scenario_cls()
    world = scenario.make_world()
    scenario.reset_world(world, rng)
    for agent in world.agents:  # random velocities: the integration order shows from the first step
        if agent.movable:
            agent.state.p_vel = rng.uniform(-0.5, 0.5, world.dim_p)
    env = types.SimpleNamespace(world=world, scenario=scenario, local_ratio=local_ratio,
                                continuous_actions=continuous, rewards={},
                                action_spaces={a.name: None for a in world.agents})
    env._set_action = lambda action, agent, space, time=None: simple_env._set_action(env, action, agent, space, time)
    env._populate_benchmark_data = lambda: None
    case = {"init": _state(module, world), "steps": []}
    for _ in range(STEPS_PER_CASE):
        if continuous:
            # float32, as MPE2's Box action spaces give them
            actions = [rng.uniform(0, 1, _action_width(a, world, True)).astype(np.float32) for a in world.agents]
            recorded = [a.tolist() for a in actions]
        else:
            actions = [int(rng.integers(_action_width(a, world, False))) for a in world.agents]
            recorded = list(actions)
        env.current_actions = [np.array(a) if continuous else a for a in actions]
        simple_env._execute_world_step(env)
        case["steps"].append({
            "actions": recorded,
            "pos": [e.state.p_pos.tolist() for e in world.entities],
            "vel": [e.state.p_vel.tolist() for e in world.entities],
            "obs": [scenario.observation(a, world).astype(np.float32).tolist() for a in world.agents],
            "rewards": [env.rewards[a.name] for a in world.agents],
        })
    return case


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.path.insert(0, sys.argv[1])
    _install_stubs()
    simple_env = importlib.import_module("mpe2._mpe_utils.simple_env").SimpleEnv
    rng = np.random.default_rng(2026)
    out = []
    for env_id, module, params, local_ratio, continuous in SCENARIOS:
        scenario_cls = importlib.import_module(f"mpe2.{module}.{module}").Scenario
        cases = [_case(simple_env, module, scenario_cls, local_ratio, continuous, rng) for _ in range(CASES_PER_SCENARIO)]
        params = dict(params, continuous_actions=continuous)
        out.append({"env": env_id, "params": params, "cases": cases})
    with open(sys.argv[2], "w") as f:
        json.dump({"source": "MPE2 (Farama Foundation), stepped by scripts/mpe2_reference.py", "scenarios": out}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
