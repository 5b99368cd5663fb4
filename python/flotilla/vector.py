"""Batches of Flotilla environments for Python training loops.

`VecEnv` follows Gymnasium's ``VectorEnv`` interface and `ParallelVecEnv` a batched form of
PettingZoo's Parallel API. Both step N environments together in C++ (on `threads` threads) and
hand back NumPy arrays that are views of the envs' own buffers: nothing is copied per step, and
every array is overwritten by the next `step()` or `reset()` (copy what you keep).

Auto-reset happens inside `step()`, as in Gymnasium's same-step mode: an env whose episode ended
at this step is already reset, so the returned observation starts its next episode, and the
observation the episode ended with is in ``infos["final_obs"]`` (rows where
``infos["_final_obs"]`` is True), with the episode's return and length in
``infos["episode_return"]`` and ``infos["episode_length"]`` (masks ``_episode_return``,
``_episode_length``: Gymnasium's convention of a ``_key`` mask per key). The key ``episode`` is
left to Gymnasium's RecordEpisodeStatistics wrapper.
"""

import json

import numpy as np

from . import _flotilla, spaces

try:  # with Gymnasium installed, VecEnv is one of its VectorEnvs (its wrappers accept it)
    from gymnasium.vector import AutoresetMode as _AutoresetMode
    from gymnasium.vector import VectorEnv as _GymVectorEnv

    _SAME_STEP = _AutoresetMode.SAME_STEP
except ImportError:
    _GymVectorEnv, _SAME_STEP = object, "SameStep"


def _params_json(env_id, params):
    try:
        return json.dumps(params)
    except TypeError as e:
        raise TypeError(f"{env_id}: env parameters must be plain values (numbers, strings, lists, dicts): {e}") from None


class _Batch:
    """What both batch kinds share: seeding, the reset-before-step rule, closing."""

    render_mode = None

    def _start(self, seed):
        self._seed, self._resets = self._checked_seed(seed), 0
        self._ready = False
        self.closed = False

    def _checked_seed(self, seed):
        if isinstance(seed, (list, tuple, np.ndarray)):
            raise TypeError(f"{self.spec_id}: reset(seed=...) takes one integer; env i draws from stream (seed, i)")
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"{self.spec_id}: seed must be 0 or more, got {seed}")
        return seed

    def _next_seed(self, seed):
        """The seed of this reset: `seed` when given, else the last given seed plus the resets since."""
        if seed is not None:
            self._seed, self._resets = self._checked_seed(seed), 0
        seed = self._seed + self._resets
        self._resets += 1
        return seed

    def _reset(self, seed):
        self._check_open()
        self._env.reset(self._next_seed(seed))
        self._done[:] = False
        self._ready = True

    def _step(self, actions):
        self._env.step(actions)
        np.logical_or(self._terminated, self._truncated, out=self._done)

    def _check_open(self):
        if self.closed:
            raise RuntimeError(f"{self.spec_id}: the env is closed")

    def _check_ready(self):
        self._check_open()
        if not self._ready:
            raise RuntimeError(f"{self.spec_id}: call reset() before step()")

    def close(self):
        self.closed = True
        self._env = None

    @property
    def unwrapped(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


class VecEnv(_Batch, _GymVectorEnv):
    """N copies of one single-agent env, stepped together (Gymnasium's VectorEnv interface)."""

    metadata = {"autoreset_mode": _SAME_STEP}

    def __init__(self, env_id, num_envs, threads=1, seed=0, max_episode_steps=0, backend="cpu", **params):
        self._env = _flotilla.VecEnv(env_id, int(num_envs), int(threads), int(max_episode_steps), _params_json(env_id, params), backend)
        spec = self._env.spec()
        self.spec_id = spec["id"]
        self.num_envs = int(num_envs)
        self.max_episode_steps = spec["max_episode_steps"]
        self.single_observation_space = spaces.from_spec(spec["observation_space"])
        self.single_action_space = spaces.from_spec(spec["action_space"])
        self.observation_space = spaces.batch(self.single_observation_space, self.num_envs)
        self.action_space = spaces.batch(self.single_action_space, self.num_envs)
        a = self._env.arrays()
        self._obs, self._reward = a["obs"], a["reward"]
        self._terminated, self._truncated = a["terminated"], a["truncated"]
        self._done = np.zeros(self.num_envs, bool)  # where an episode ended at the last step
        done = _read_only(self._done)
        self._infos = {
            "final_obs": a["final_obs"],
            "_final_obs": done,
            "episode_return": a["episode_return"],
            "_episode_return": done,
            "episode_length": a["episode_length"],
            "_episode_length": done,
        }
        self._start(seed)

    def reset(self, *, seed=None, options=None):
        """Starts a new episode in every env; env i draws from its own stream keyed by (seed, i)."""
        self._reset(seed)
        return self._obs, {}

    def step(self, actions):
        """Steps every env: `actions` is [N] integers (Discrete) or [N, k] (MultiDiscrete, Box)."""
        self._check_ready()
        self._step(actions)
        # A new dict each step (its arrays are the same views): wrappers add keys to infos.
        return self._obs, self._reward, self._terminated, self._truncated, dict(self._infos)

    def __repr__(self):
        return f"flotilla.VecEnv({self.spec_id!r}, num_envs={self.num_envs})"


class ParallelVecEnv(_Batch):
    """N copies of one multi-agent env, in a batched form of PettingZoo's Parallel API.

    Every per-agent value is a dict keyed by agent name whose arrays have the batch first:
    ``observations[agent]`` is [N, obs], or, where the env has action masks (discrete actions),
    ``{"observation": [N, obs], "action_mask": [N, n]}`` as PettingZoo's masked envs give it.
    ``step(actions)`` takes ``{agent: [N] or [N, k]}``. Agents stay in `agents` for the whole
    batch (an env's episode ends for all its agents together and is reset in place);
    ``terminations[agent]`` is True where that agent is done (dead or its episode over) and
    ``truncations[agent]`` where the episode hit its time limit.
    """

    metadata = {"autoreset_mode": _SAME_STEP, "is_parallelizable": True}

    def __init__(self, env_id, num_envs, threads=1, seed=0, max_episode_steps=0, backend="cpu", **params):
        self._env = _flotilla.MultiAgentVecEnv(env_id, int(num_envs), int(threads), int(max_episode_steps),
                                               _params_json(env_id, params), backend)
        spec = self._env.spec()
        self.spec_id = spec["id"]
        self.num_envs = int(num_envs)
        self.max_episode_steps = spec["max_episode_steps"]
        self.possible_agents = [a["name"] for a in spec["agents"]]
        self.agents = list(self.possible_agents)
        self.masked = bool(spec["discrete"])
        self.observation_spaces = {a["name"]: spaces.from_spec(a["observation_space"]) for a in spec["agents"]}
        self.action_spaces = {a["name"]: spaces.from_spec(a["action_space"]) for a in spec["agents"]}
        self.state_space = spaces.from_spec(spec["state_space"])
        arrays = self._env.arrays()
        self._state = arrays["state"]
        num_agents = len(self.possible_agents)
        action_shape = (self.num_envs, num_agents) if self.masked else (self.num_envs, num_agents, self._widest_box())
        self._actions = np.zeros(action_shape, np.int64 if self.masked else np.float32)
        self._done = np.zeros(self.num_envs, bool)
        done = _read_only(self._done)

        def own(array, i, agent):  # agent i's columns of a padded [N, A, width] array
            width = self.observation_spaces[agent].shape[0]
            return array[:, i, :width]

        def mask(array, i, agent):
            return array[:, i, : self.action_spaces[agent].n]

        self._observations, self._rewards, self._terminations, self._truncations, self._infos = {}, {}, {}, {}, {}
        for i, agent in enumerate(self.possible_agents):
            obs = own(arrays["obs"], i, agent)
            final = own(arrays["final_obs"], i, agent)
            self._observations[agent] = {"observation": obs, "action_mask": mask(arrays["action_mask"], i, agent)} if self.masked else obs
            self._rewards[agent] = arrays["reward"][:, i]
            self._terminations[agent] = arrays["agent_done"][:, i]
            self._truncations[agent] = arrays["truncated"]
            info = {"final_obs": final, "_final_obs": done, "episode_return": arrays["episode_return"][:, i], "_episode_return": done,
                    "episode_length": arrays["episode_length"], "_episode_length": done}
            if self.masked:
                info["final_action_mask"] = mask(arrays["final_action_mask"], i, agent)
            if spec["has_outcome"]:
                info["won"], info["_won"] = arrays["won"], done
            self._infos[agent] = info
        self._terminated, self._truncated = arrays["terminated"], arrays["truncated"]
        self._start(seed)

    def _widest_box(self):
        return max(int(np.prod(s.shape)) for s in self.action_spaces.values())

    def observation_space(self, agent):
        return self.observation_spaces[agent]

    def action_space(self, agent):
        return self.action_spaces[agent]

    def state(self):
        """The global state of every env, [N, S] (for centralized critics)."""
        return self._state

    def reset(self, seed=None, options=None):
        self._reset(seed)
        return dict(self._observations), {agent: {} for agent in self.possible_agents}

    def step(self, actions):
        self._check_ready()
        if not isinstance(actions, dict):
            raise TypeError(f"{self.spec_id}: step() takes a dict of actions keyed by agent ({', '.join(self.possible_agents)})")
        unknown = [a for a in actions if a not in self.action_spaces]
        if unknown:
            raise ValueError(f"{self.spec_id}: no agent named {unknown[0]!r}; the agents are {', '.join(self.possible_agents)}")
        for i, agent in enumerate(self.possible_agents):
            if agent not in actions:
                raise ValueError(f"{self.spec_id}: no action for agent {agent!r}")
            a = np.asarray(actions[agent])
            if self.masked and a.dtype.kind not in "iu":
                raise TypeError(f"{self.spec_id}: actions of agent {agent!r} must be integers, got dtype {a.dtype}")
            expected = (self.num_envs,) if self.masked else (self.num_envs, int(np.prod(self.action_spaces[agent].shape)))
            if a.shape != expected:
                raise ValueError(f"{self.spec_id}: actions of agent {agent!r} have shape {a.shape}, expected {expected}")
            if self.masked:
                self._actions[:, i] = a
            else:
                self._actions[:, i, : expected[1]] = a
        self._step(self._actions)
        return (dict(self._observations), dict(self._rewards), dict(self._terminations), dict(self._truncations),
                {agent: dict(info) for agent, info in self._infos.items()})

    def __repr__(self):
        return f"flotilla.ParallelVecEnv({self.spec_id!r}, num_envs={self.num_envs}, agents={self.possible_agents})"
