# flotilla.make_vec for single-agent envs: Gymnasium's VectorEnv interface over the C++ batch.
import numpy as np
import pytest

import flotilla


def test_shapes_dtypes_and_spaces():
    env = flotilla.make_vec("CartPole-v1", num_envs=8, seed=1)
    assert isinstance(env, flotilla.VecEnv)
    obs, infos = env.reset()
    assert obs.shape == (8, 4) and obs.dtype == np.float32
    assert infos == {}
    assert env.single_observation_space.shape == (4,)
    assert env.single_action_space.n == 2
    assert env.observation_space.shape == (8, 4)
    assert list(env.action_space.nvec) == [2] * 8
    obs, rewards, terminations, truncations, infos = env.step(np.ones(8, np.int64))
    assert rewards.shape == (8,) and rewards.dtype == np.float32
    assert terminations.dtype == np.bool_ and truncations.dtype == np.bool_
    assert np.all(rewards == 1.0)
    assert infos["final_obs"].shape == (8, 4) and infos["_final_obs"].shape == (8,)

    box = flotilla.make_vec("Pendulum-v1", num_envs=3)
    assert box.single_action_space.shape == (1,)
    assert box.single_action_space.dtype == np.float32
    assert box.single_action_space.high[0] == pytest.approx(2.0)
    box.reset(seed=0)
    _, rewards, *_ = box.step(np.zeros((3, 1)))  # float64 is converted
    assert rewards.shape == (3,) and np.all(rewards <= 0)


def test_autoreset_keeps_the_final_observation_and_the_episode_in_infos():
    env = flotilla.make_vec("CartPole-v1", num_envs=16, seed=3)
    obs, _ = env.reset()
    for t in range(1, 200):
        obs, _, terminations, truncations, infos = env.step(np.ones(16, np.int64))  # always push right: falls in ~10 steps
        if terminations.any():
            break
    ended = np.flatnonzero(infos["_final_obs"])
    assert len(ended) > 0 and np.array_equal(infos["_final_obs"], terminations | truncations)
    for i in ended:
        final = infos["final_obs"][i]
        assert abs(final[2]) > 0.2095 or abs(final[0]) > 2.4  # CartPole's termination condition
        assert np.all(np.abs(obs[i]) <= 0.05)  # the next episode's first observation
        assert infos["episode_length"][i] == t
        assert infos["episode_return"][i] == pytest.approx(t)
    # An env that did not end keeps stepping from where it was.
    running = np.flatnonzero(~infos["_final_obs"])
    assert np.all(np.abs(obs[running, 0]) < 2.4)


def test_same_seed_same_trajectory_on_any_thread_count_and_equal_to_env_trace(trace):
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(30, 6))

    def rollout(threads, seed):
        env = flotilla.make_vec("CartPole-v1", num_envs=6, threads=threads)
        obs, _ = env.reset(seed=seed)
        seen = [obs.copy()]
        for a in actions:
            obs, _, term, trunc, infos = env.step(a)
            seen.append(np.where((term | trunc)[:, None], infos["final_obs"], obs).copy())
        return np.stack(seen)

    one = rollout(1, 7)
    assert np.array_equal(one, rollout(1, 7))
    assert np.array_equal(one, rollout(3, 7))
    assert not np.array_equal(one, rollout(1, 8))
    # Env 0 of a batch seeded 7 is the env `flotilla env trace --seed 7` steps.
    lines = trace("CartPole-v1", 7, actions[:, 0].tolist())
    steps = len(lines)  # the trace stops where the episode ends
    expected = np.array([line["obs"] for line in lines], np.float32)
    assert np.array_equal(one[:steps, 0], expected)


def test_reset_without_a_seed_starts_other_episodes():
    env = flotilla.make_vec("CartPole-v1", num_envs=4, seed=5)
    first = env.reset()[0].copy()
    second = env.reset()[0].copy()
    assert not np.array_equal(first, second)
    assert np.array_equal(env.reset(seed=5)[0], first)


def test_arrays_are_read_only_views_of_the_env_buffers():
    env = flotilla.make_vec("CartPole-v1", num_envs=32, seed=0)
    obs, _ = env.reset()
    before = obs.copy()
    same, rewards, *_ = env.step(np.zeros(32, np.int64))
    assert same is obs  # one array for the whole life of the env
    assert not np.array_equal(obs, before)  # the step wrote into it
    assert obs.base is not None and not obs.flags.owndata
    assert not obs.flags.writeable and not rewards.flags.writeable
    with pytest.raises(ValueError):
        obs[0, 0] = 1.0


def test_bad_actions_name_the_env_and_the_value_and_change_nothing():
    env = flotilla.make_vec("CartPole-v1", num_envs=4, seed=0)
    obs, _ = env.reset()
    kept = obs.copy()
    with pytest.raises(ValueError, match=r"CartPole-v1: env 2: action 5 is outside Discrete\(2\)"):
        env.step(np.array([0, 1, 5, 0]))
    with pytest.raises(ValueError, match=r"CartPole-v1: actions have shape \[3\], expected \[4\]"):
        env.step(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="CartPole-v1: actions must be integers, got dtype float64"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="CartPole-v1: env 1: action -1"):
        env.step([0, -1, 0, 0])
    assert np.array_equal(obs, kept)  # a rejected step leaves the batch as it was
    env.step([0, 1, 1, 0])  # a list is taken as an array

    pendulum = flotilla.make_vec("Pendulum-v1", num_envs=2)
    pendulum.reset()
    with pytest.raises(ValueError, match="Pendulum-v1: env 1"):
        pendulum.step(np.array([[0.0], [np.nan]], np.float32))


def test_misuse_and_bad_configuration_are_named():
    with pytest.raises(flotilla.ConfigError, match="CartPol-v1.*CartPole-v1"):
        flotilla.make_vec("CartPol-v1", num_envs=2)
    with pytest.raises(flotilla.ConfigError, match="num_envs must be at least 1"):
        flotilla.make_vec("CartPole-v1", num_envs=0)
    with pytest.raises(flotilla.ConfigError, match="gravity"):
        flotilla.make_vec("CartPole-v1", num_envs=2, gravity=3.0)  # CartPole takes no parameters
    env = flotilla.make_vec("CartPole-v1", num_envs=2)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step([0, 0])
    with pytest.raises(TypeError, match="one integer"):
        env.reset(seed=[1, 2])
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


def test_max_episode_steps_truncates():
    env = flotilla.make_vec("Pendulum-v1", num_envs=2, max_episode_steps=5)
    env.reset(seed=0)
    for _ in range(4):
        _, _, term, trunc, _ = env.step(np.zeros((2, 1), np.float32))
        assert not trunc.any()
    _, _, term, trunc, infos = env.step(np.zeros((2, 1), np.float32))
    assert trunc.all() and not term.any()
    assert np.all(infos["episode_length"] == 5)


def test_bench_times_the_python_and_cpp_loops_of_one_batch():
    from flotilla import bench

    r = bench.measure("CartPole-v1", num_envs=256, threads=1, seconds=0.05, turns=2)
    assert r["cpp_steps_per_second"] > 0 and r["python_steps_per_second"] > 0
    assert r["ratio"] == pytest.approx(r["python_steps_per_second"] / r["cpp_steps_per_second"])
    with pytest.raises(SystemExit, match="multi-agent"):
        bench.measure("smax/3m", num_envs=4, threads=1, seconds=0.01, turns=1)
