"""Flotilla from Python: batched C++ environments as Gymnasium / PettingZoo vector envs, and runs.

    import flotilla
    envs = flotilla.make_vec("CartPole-v1", num_envs=4096)
    obs, infos = envs.reset(seed=0)
    obs, rewards, terminations, truncations, infos = envs.step(actions)

    run = flotilla.run("configs/cartpole_ppo.yaml", {"train.total_steps": 50000})
    run.summary["charts/episodic_return"], run.metrics(frame=True)
"""

from . import spaces
from ._flotilla import ConfigError, env_ids
from .runs import Run, RunError, cli_path, read_metrics, run
from .vector import ParallelVecEnv, VecEnv

__all__ = ["make_vec", "make_parallel_vec", "envs", "VecEnv", "ParallelVecEnv", "ConfigError", "run", "Run", "RunError",
           "read_metrics", "cli_path", "spaces"]


def envs():
    """Every environment id: [(id, multi_agent, summary), ...]."""
    return env_ids()


def make_vec(env_id, num_envs, threads=1, seed=0, **params):
    """`num_envs` copies of `env_id` stepped together on `threads` threads. Single-agent ids give a
    VecEnv (Gymnasium's VectorEnv interface), multi-agent ones ("mpe/simple_spread", ...) a
    ParallelVecEnv (PettingZoo's Parallel API, batched). `params` are the env's own parameters
    (as under env.params in an experiment), plus max_episode_steps and backend."""
    multi_agent = {i: m for i, m, _ in env_ids()}.get(env_id)
    cls = ParallelVecEnv if multi_agent else VecEnv
    return cls(env_id, num_envs, threads=threads, seed=seed, **params)


def make_parallel_vec(env_id, num_envs, threads=1, seed=0, **params):
    """A multi-agent env as a batched PettingZoo Parallel env (see ParallelVecEnv)."""
    return ParallelVecEnv(env_id, num_envs, threads=threads, seed=seed, **params)
