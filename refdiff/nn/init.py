"""Parameter initialisation: PyTorch's defaults, drawn from an explicit seeded generator.

Linear and Conv2d (PyTorch's kaiming_uniform_(a=sqrt(5)) and its bias rule) both reduce to
    weight, bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),   fan_in = in_features * kernel area.
GroupNorm: gamma = 1, beta = 0.  Embedding: N(0, 1).  Everything is float32 on the host;
Module.to(backend) moves it.
"""
import numpy as np


def as_rng(rng):
    """A numpy Generator from a Generator, an int seed, or None (seed 0: same model every time)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def fan_in_uniform(rng, shape, fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) of `shape`, float32 (PyTorch's Linear/Conv default)."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def normal(rng, shape, std=1.0):
    return (std * rng.standard_normal(shape)).astype(np.float32)


def zeros(shape):
    return np.zeros(shape, dtype=np.float32)


def ones(shape):
    return np.ones(shape, dtype=np.float32)
