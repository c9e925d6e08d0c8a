"""Initialisers the tutorial uses, each ``init(key, shape, dtype=float32) -> array``, as MXNet
defines them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)


def uniform(scale: float = 0.07):
    """U(-scale, scale); ``uniform(0.07)`` is MXNet's default ``initialize()``."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


def normal(sigma: float = 0.01):
    """N(0, sigma^2), as ``mx.init.Normal(sigma)`` and ``nd.random_normal(scale=sigma)``."""
    def init(key, shape, dtype=jnp.float32):
        return sigma * jax.random.normal(key, shape, dtype)
    return init


def xavier(rnd_type: str = "uniform", factor_type: str = "avg", magnitude: float = 3.0):
    """MXNet's ``init.Xavier``: fan_in = shape[1]*receptive, fan_out = shape[0]*receptive,
    scale = sqrt(magnitude / factor) with factor the fans' mean ('avg'), fan_in or fan_out;
    U(-scale, scale) or N(0, scale^2)."""
    if rnd_type not in ("uniform", "gaussian"):
        raise ValueError(f"rnd_type {rnd_type!r} is not 'uniform' or 'gaussian'")
    if factor_type not in ("avg", "in", "out"):
        raise ValueError(f"factor_type {factor_type!r} is not 'avg', 'in' or 'out'")

    def init(key, shape, dtype=jnp.float32):
        if len(shape) < 2:
            raise ValueError(f"Xavier needs a weight of rank >= 2, got shape {shape}")
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        factor = {"avg": (fan_in + fan_out) / 2, "in": fan_in, "out": fan_out}[factor_type]
        scale = math.sqrt(magnitude / factor)
        if rnd_type == "uniform":
            return jax.random.uniform(key, shape, dtype, -scale, scale)
        return scale * jax.random.normal(key, shape, dtype)
    return init


BY_NAME = {"uniform": uniform(0.07), "normal": normal(0.01), "xavier": xavier()}
