"""A max pool of non-overlapping windows whose gradient XLA:CPU runs quickly, and MXNet's
first-maximum rule, which it shares with the fused convolution-and-pool layer."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet import _checks
from jaxlenet.pooling import pool


def max_pool(x, window, *, layout: str | None = None):
    """Equals ``layers.pool(x, window, kind="max", layout=layout)``: stride = window, no
    padding, 'valid' windows (rows and columns that fill no window are dropped), and the gradient
    goes to the first maximum of each window, as in MXNet.

    The max runs over a reshape, and its gradient is one comparison and one select rather than
    ``reduce_window``'s select-and-scatter, which XLA:CPU runs several times slower."""
    out = jax.eval_shape(functools.partial(pool, window=window, layout=layout), x)  # its checks
    _, channels_last = _checks.spatial_layout(layout, jnp.ndim(x))
    spatial_axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    window = _checks.as_tuple("kernel", window, len(spatial_axes), default=1)
    crop = [slice(None)] * x.ndim
    for axis, k in zip(spatial_axes, window):
        crop[axis] = slice(0, out.shape[axis] * k)
    return _blocks_max(x[tuple(crop)], spatial_axes, window)


def _split_shape(shape, spatial_axes, window):
    """Shape with each spatial axis split into (windows, kernel), and the kernel axes' positions."""
    split, kernel_axes = [], []
    for axis, n in enumerate(shape):
        if axis in spatial_axes:
            k = window[spatial_axes.index(axis)]
            split += [n // k, k]
            kernel_axes.append(len(split) - 1)
        else:
            split.append(n)
    return tuple(split), tuple(kernel_axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _blocks_max(x, spatial_axes, window):
    split, kernel_axes = _split_shape(x.shape, spatial_axes, window)
    return jnp.max(x.reshape(split), axis=kernel_axes)


def _blocks_fwd(x, spatial_axes, window):
    y = _blocks_max(x, spatial_axes, window)
    return y, (x, y)


def _blocks_bwd(spatial_axes, window, residuals, cotangent):
    x, y = residuals
    split, kernel_axes = _split_shape(x.shape, spatial_axes, window)
    blocks = x.reshape(split)
    y = jnp.expand_dims(y, kernel_axes)
    ct = jnp.expand_dims(cotangent, kernel_axes)
    position, first = first_maximum(blocks, y, kernel_axes)
    grad = jnp.where(position == first, ct, jnp.zeros((), ct.dtype))
    return (grad.reshape(x.shape),)


_blocks_max.defvjp(_blocks_fwd, _blocks_bwd)


def first_maximum(x, top, axes):
    """MXNet's rule for which element of a window takes a max pool's gradient: the first, in
    row-major window order, that holds the maximum. ``x`` holds the windows along ``axes``, and
    ``top`` their maxima with those axes kept (size 1). Returns the positions' numbers (int32,
    shaped to broadcast against ``x``) and the first maximum's number per window (shaped like
    ``top``; the window's size where none holds it: NaN).

    Numbering the positions and keeping the smallest that holds the maximum is one reduction and
    one select, which XLA fuses; an argmax over a transposed copy costs several times more."""
    shape = [1] * x.ndim
    for axis in axes:
        shape[axis] = x.shape[axis]
    position = jnp.asarray(np.arange(math.prod(shape), dtype=np.int32).reshape(shape))
    first = jnp.min(jnp.where(x == top, position, position.size), axis=axes, keepdims=True)
    return position, first
