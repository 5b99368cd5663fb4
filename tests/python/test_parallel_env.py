# flotilla.make_vec for multi-agent envs: a batched form of PettingZoo's Parallel API.
import numpy as np
import pytest

import flotilla


def random_actions(env, rng):
    out = {}
    for agent in env.possible_agents:
        space = env.action_space(agent)
        if hasattr(space, "n"):
            out[agent] = rng.integers(0, space.n, size=env.num_envs)
        else:
            out[agent] = rng.uniform(space.low, space.high, size=(env.num_envs,) + space.shape).astype(np.float32)
    return out


def test_dicts_keyed_by_agent_with_action_masks():
    env = flotilla.make_vec("smax/3m", num_envs=5, seed=2)
    assert isinstance(env, flotilla.ParallelVecEnv)
    assert env.possible_agents == ["marine_0", "marine_1", "marine_2"]
    observations, infos = env.reset()
    assert set(observations) == set(env.possible_agents) and set(infos) == set(env.possible_agents)
    width = env.observation_space("marine_0").shape[0]
    n = env.action_space("marine_0").n
    first = observations["marine_0"]
    assert first["observation"].shape == (5, width) and first["observation"].dtype == np.float32
    assert first["action_mask"].shape == (5, n) and first["action_mask"].dtype == np.bool_
    assert env.state().shape == (5, env.state_space.shape[0])
    rng = np.random.default_rng(0)
    for _ in range(3):
        # Legal actions only: the first available one for each env.
        actions = {a: np.argmax(observations[a]["action_mask"], axis=1) for a in env.possible_agents}
        observations, rewards, terminations, truncations, infos = env.step(actions)
    assert rewards["marine_1"].shape == (5,) and rewards["marine_1"].dtype == np.float32
    assert terminations["marine_2"].dtype == np.bool_ and truncations["marine_2"].shape == (5,)
    assert infos["marine_0"]["final_obs"].shape == (5, width)
    assert "won" in infos["marine_0"]  # SMAX episodes are won or lost
    del rng


def test_continuous_agents_take_boxes_and_episodes_truncate():
    env = flotilla.make_vec("mpe/simple_spread", num_envs=4, seed=0, N=2, continuous_actions=True, max_episode_steps=3)
    assert env.possible_agents == ["agent_0", "agent_1"]
    observations, _ = env.reset()
    assert observations["agent_0"].shape == (4, env.observation_space("agent_0").shape[0])  # no mask: the array itself
    rng = np.random.default_rng(1)
    for t in range(3):
        observations, rewards, terminations, truncations, infos = env.step(random_actions(env, rng))
    assert truncations["agent_0"].all()
    assert np.all(infos["agent_1"]["episode_length"] == 3)
    assert np.array_equal(infos["agent_0"]["_final_obs"], np.ones(4, bool))


def test_same_seed_same_trajectory_and_equal_to_env_trace(trace):
    rng = np.random.default_rng(3)
    steps = [rng.integers(0, 5, size=(3, 2)) for _ in range(10)]  # [agent][env]

    def rollout(threads):
        env = flotilla.make_vec("mpe/simple_spread", num_envs=2, threads=threads, N=3)
        obs, _ = env.reset(seed=11)
        seen = [np.stack([obs[a]["observation"].copy() for a in env.possible_agents])]  # discrete: masked
        for s in steps:
            obs, *_ = env.step({a: s[i] for i, a in enumerate(env.possible_agents)})
            seen.append(np.stack([obs[a]["observation"].copy() for a in env.possible_agents]))
        return np.stack(seen)  # [t, agent, env, obs]

    one = rollout(1)
    assert np.array_equal(one, rollout(2))
    lines = trace("mpe/simple_spread", 11, [s[:, 0].tolist() for s in steps], params=["N=3"])
    for t, line in enumerate(lines):
        for i, agent in enumerate(["agent_0", "agent_1", "agent_2"]):
            assert np.array_equal(one[t, i, 0], np.array(line["agents"][agent]["obs"], np.float32)), (t, agent)


def test_bad_actions_name_the_agent_env_and_value():
    env = flotilla.make_vec("mpe/simple_spread", num_envs=3, N=2)
    env.reset(seed=0)
    good = {"agent_0": np.zeros(3, np.int64), "agent_1": np.zeros(3, np.int64)}
    with pytest.raises(ValueError, match="no action for agent 'agent_1'"):
        env.step({"agent_0": good["agent_0"]})
    with pytest.raises(ValueError, match="no agent named 'agent_7'"):
        env.step({**good, "agent_7": good["agent_0"]})
    with pytest.raises(ValueError, match=r"actions of agent 'agent_0' have shape \(2,\), expected \(3,\)"):
        env.step({**good, "agent_0": np.zeros(2, np.int64)})
    with pytest.raises(TypeError, match="must be integers"):
        env.step({**good, "agent_1": np.zeros(3)})
    with pytest.raises(ValueError, match=r"mpe/simple_spread: env 2, agent 'agent_1': action 9 is outside Discrete\(5\)"):
        env.step({**good, "agent_1": np.array([0, 1, 9])})
    with pytest.raises(TypeError, match="dict of actions"):
        env.step([0, 0])
    with pytest.raises(flotilla.ConfigError, match="Nn"):
        flotilla.make_vec("mpe/simple_spread", num_envs=1, Nn=2)
    env.step(good)


def test_byte_observations_and_turn_based_masks():
    env = flotilla.make_vec("overcooked/cramped_room", num_envs=2, seed=1)
    obs, _ = env.reset(seed=1)
    space = env.observation_space("agent_0")
    assert space.dtype == np.uint8 and space.shape == (5 * 4 * 26,)
    assert obs["agent_0"]["observation"].dtype == np.uint8
    assert int(obs["agent_0"]["observation"][0].sum()) == 18  # the cooks' 4 bits and 14 terrain cells
    hanabi = flotilla.make_vec("hanabi/full", num_envs=2, seed=1)
    obs, _ = hanabi.reset(seed=1)
    mask = obs["player_1"]["action_mask"]
    assert mask[:, 20].all() and not mask[:, :20].any()  # not player 1's turn: the no-op only
    with pytest.raises(ValueError, match=r"env 0, agent 'player_0': action 0 is not legal now"):
        hanabi.step({"player_0": np.array([0, 0]), "player_1": np.array([20, 20])})
    obs, rewards, *_ = hanabi.step({"player_0": np.array([5, 5]), "player_1": np.array([20, 20])})
    assert obs["player_1"]["action_mask"][:, :20].any(axis=1).all()  # now player 1 moves
    assert not obs["player_0"]["action_mask"][:, :20].any()
