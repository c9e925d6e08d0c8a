"""Max, average, sum and Lp pooling with MXNet 1.9.1's exact semantics, on ``lax.reduce_window``.

Windows are laid out in unpadded coordinates: window ``i`` covers ``[i*s - p, i*s - p + k)``.
``'valid'`` keeps ``floor((x + 2p - k) / s) + 1`` windows, ``'full'`` keeps ``ceil(...) + 1``,
including windows that start in the right padding or past the input (no ``ceil_mode`` trimming).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlenet import _checks

POOL_KINDS = ("max", "avg", "sum", "lp")
CONVENTIONS = ("valid", "full")


def output_size(size: int, kernel: int, stride: int, pad: int, convention: str) -> int:
    """Number of windows along one dimension."""
    span = size + 2 * pad - kernel
    return (span // stride if convention == "valid" else -(-span // stride)) + 1


def pool(x, window=None, *, kind: str = "max", stride=None, padding=0, convention: str = "valid",
         count_include_pad: bool = True, p_value: int | None = None, global_pool: bool = False,
         layout: str | None = None):
    """Pools ``x`` of shape (N, C, *spatial) (or channels-last with ``layout='NHWC'`` etc.).

    - ``window``, ``stride``, ``padding``: an int (every dimension) or one int per spatial dim.
      ``stride`` defaults to ``window`` (Gluon's ``MaxPool2D``); ``jaxlenet.nd.Pooling`` defaults it
      to 1, as MXNet does.
    - ``kind='max'`` pads with the dtype's lowest finite value, so a window with no input element
      gives that value; its gradient goes to the first maximum in row-major window order.
    - ``kind='avg'`` divides the in-bounds sum by the window clipped to the padded extent
      (``count_include_pad=True``) or by the in-bounds count (``False``); empty windows give 0.
    - ``kind='sum'`` sums in-bounds elements; ``kind='lp'`` with ``p_value`` 1 (signed sum), 2 or 3
      (signed cube root of the sum of cubes); zero windows get a zero gradient.
    - ``global_pool=True`` pools each whole feature map to size 1 and ignores the geometry.
    """
    ndim = jnp.ndim(x)
    _checks.floating("data", x)
    layout, channels_last = _checks.spatial_layout(layout, ndim)
    spatial_axes = tuple(range(1, ndim - 1)) if channels_last else tuple(range(2, ndim))
    sizes = tuple(jnp.shape(x)[a] for a in spatial_axes)
    nsp = len(spatial_axes)
    if kind not in POOL_KINDS:
        raise ValueError(f"pool kind {kind!r} is not one of {POOL_KINDS}")
    if convention not in CONVENTIONS:
        raise ValueError(f"pooling convention {convention!r} is not one of {CONVENTIONS}")
    if kind == "lp" and p_value not in (1, 2, 3):
        raise ValueError(f"p_value {p_value!r} is not supported for lp pooling: expected 1, 2 or 3")
    if global_pool:
        window, stride, padding, convention = sizes, (1,) * nsp, (0,) * nsp, "valid"
    elif window is None:
        raise ValueError("window is required unless global_pool=True")
    window = _checks.positive("kernel", _checks.as_tuple("kernel", window, nsp, default=1))
    stride = _checks.positive("stride", _checks.as_tuple("stride", stride if stride is not None
                                                         else window, nsp, default=1))
    padding = _checks.as_tuple("pad", padding, nsp, default=0)
    for size, k, p in zip(sizes, window, padding):
        if k > size + 2 * p:
            raise ValueError(f"kernel {window} exceeds the input {sizes} padded by {padding} "
                             f"(data {jnp.shape(x)})")

    outs = tuple(output_size(n, k, s, p, convention)
                 for n, k, s, p in zip(sizes, window, stride, padding))

    # Pad (or crop) each spatial dim so that exactly the kept windows fit, then reduce VALID.
    config = [(0, 0, 0)] * ndim
    for axis, n, k, s, p, o in zip(spatial_axes, sizes, window, stride, padding, outs):
        config[axis] = (p, (o - 1) * s + k - n - p, 0)
    dims = [1] * ndim
    steps = [1] * ndim
    for axis, k, s in zip(spatial_axes, window, stride):
        dims[axis], steps[axis] = k, s

    def window_sum(values):
        padded = lax.pad(values, jnp.zeros((), values.dtype), config)
        # A concrete 0 init makes this JAX's differentiable reduce_window_sum.
        return lax.reduce_window(padded, np.array(0, values.dtype), lax.add, dims, steps, "VALID")

    if kind == "max":
        lowest = jnp.array(jnp.finfo(x.dtype).min, x.dtype)
        padded = lax.pad(x, lowest, config)
        return lax.reduce_window(padded, -jnp.inf, lax.max, dims, steps, "VALID")
    if kind == "sum" or (kind == "lp" and p_value == 1):
        return window_sum(x)
    if kind == "avg":
        inverse = _inverse_divisors(sizes, window, stride, padding, outs, count_include_pad)
        shape = [1] * ndim
        for axis, o in zip(spatial_axes, outs):
            shape[axis] = o
        return window_sum(x) * jnp.asarray(inverse.reshape(shape), x.dtype)
    total = window_sum(x ** p_value)
    nonzero = total != 0
    safe = jnp.where(nonzero, total, jnp.ones_like(total))
    root = jnp.sqrt(safe) if p_value == 2 else jnp.cbrt(safe)
    return jnp.where(nonzero, root, jnp.zeros_like(root))


def _inverse_divisors(sizes, window, stride, padding, outs, count_include_pad) -> np.ndarray:
    """1 / D for every output position (0 where D <= 0: an empty window averages to 0)."""
    inverse = np.ones((), np.float64)
    for n, k, s, p, o in zip(sizes, window, stride, padding, outs):
        start = np.arange(o) * s - p
        end = start + k
        if count_include_pad:
            divisor = np.minimum(end, n + p) - start
        else:
            divisor = np.minimum(end, n) - np.maximum(start, 0)
        inv = np.where(divisor > 0, 1.0 / np.maximum(divisor, 1), 0.0)
        inverse = np.multiply.outer(inverse, inv)
    return inverse
