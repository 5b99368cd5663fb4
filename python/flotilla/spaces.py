"""Observation and action spaces.

With Gymnasium installed, envs describe their spaces with Gymnasium's own classes; without it,
with the small classes below, which carry the same attributes (``shape``, ``dtype``, ``low``,
``high``, ``n``, ``nvec``) and methods (``sample``, ``contains``).
"""

import numpy as np

try:
    import gymnasium as _gym
except ImportError:  # Gymnasium is optional
    _gym = None


class Box:
    def __init__(self, low, high, shape=None, dtype=np.float32, seed=None):
        self.dtype = np.dtype(dtype)
        shape = tuple(shape) if shape is not None else np.shape(low)
        self.low = np.broadcast_to(np.asarray(low, self.dtype), shape).copy()
        self.high = np.broadcast_to(np.asarray(high, self.dtype), shape).copy()
        self.shape = shape
        self.np_random = np.random.default_rng(seed)

    def sample(self):
        low = np.where(np.isfinite(self.low), self.low, -1.0)
        high = np.where(np.isfinite(self.high), self.high, 1.0)
        return self.np_random.uniform(low, high).astype(self.dtype)

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all((x >= self.low) & (x <= self.high)))

    def __repr__(self):
        return f"Box({self.low.min()}, {self.high.max()}, {self.shape}, {self.dtype})"


class Discrete:
    def __init__(self, n, seed=None):
        self.n = int(n)
        self.shape = ()
        self.dtype = np.dtype(np.int64)
        self.np_random = np.random.default_rng(seed)

    def sample(self):
        return np.int64(self.np_random.integers(self.n))

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == () and x.dtype.kind in "iu" and 0 <= int(x) < self.n

    def __repr__(self):
        return f"Discrete({self.n})"


class MultiDiscrete:
    def __init__(self, nvec, seed=None):
        self.nvec = np.asarray(nvec, np.int64)
        self.shape = self.nvec.shape
        self.dtype = np.dtype(np.int64)
        self.np_random = np.random.default_rng(seed)

    def sample(self):
        return self.np_random.integers(self.nvec).astype(np.int64)

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and x.dtype.kind in "iu" and bool(np.all((x >= 0) & (x < self.nvec)))

    def __repr__(self):
        return f"MultiDiscrete({self.nvec.tolist()})"


def from_spec(d):
    """A space from the extension's description of one (kind, shape, low, high, n, nvec)."""
    g = _gym.spaces if _gym is not None else None
    if d["kind"] == "Discrete":
        return g.Discrete(d["n"]) if g else Discrete(d["n"])
    if d["kind"] == "MultiDiscrete":
        return g.MultiDiscrete(d["nvec"]) if g else MultiDiscrete(d["nvec"])
    shape = tuple(d["shape"])
    dtype = np.dtype(d.get("dtype") or "float32")  # uint8 for envs that store bytes
    low = np.asarray(d["low"]).astype(dtype).reshape(shape)
    high = np.asarray(d["high"]).astype(dtype).reshape(shape)
    return g.Box(low, high, shape, dtype) if g else Box(low, high, shape, dtype)


def batch(space, n):
    """The space of n stacked values of `space`, as Gymnasium's batch_space makes it."""
    if _gym is not None:
        from gymnasium.vector.utils import batch_space

        return batch_space(space, n)
    if isinstance(space, Discrete):
        return MultiDiscrete(np.full(n, space.n))
    if isinstance(space, MultiDiscrete):
        return MultiDiscrete(np.tile(space.nvec, (n,) + (1,) * space.nvec.ndim))
    return Box(np.stack([space.low] * n), np.stack([space.high] * n), (n,) + space.shape, space.dtype)
