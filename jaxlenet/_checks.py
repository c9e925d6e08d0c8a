"""Argument normalisation shared by the ops: each check names the argument, its value and what was
expected, and runs at trace time (on shapes), so it works under ``jit``."""

from __future__ import annotations

import jax.numpy as jnp


def as_tuple(name: str, value, ndim: int, *, default: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``ndim`` non-negative ints; ``None`` or ``()`` gives ``default``
    in every dimension.

    An int is broadcast (the core's convenience); ``jaxlenet.nd`` refuses ints as MXNet does."""
    if value is None or value == ():
        return (default,) * ndim
    if hasattr(value, "__index__") and not isinstance(value, bool):  # int, NumPy integer
        value = (int(value),) * ndim
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}") from None
    if len(items) != ndim:
        raise ValueError(f"{name} {items} must have {ndim} entries, one per spatial dimension")
    for item in items:
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(f"{name} must hold ints, got {items!r}")
        if int(item) < 0:
            raise ValueError(f"{name} {items} must not be negative")
    return tuple(int(item) for item in items)


def positive(name: str, values: tuple[int, ...]) -> tuple[int, ...]:
    if any(v < 1 for v in values):
        raise ValueError(f"{name} {values} must be at least 1 in every dimension")
    return values


def floating(name: str, x) -> None:
    """Refuses integer and boolean arrays: the ops are defined on floating point only."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}")


def spatial_layout(layout: str | None, ndim: int) -> tuple[str, bool]:
    """(layout, channels_last) for data of rank ``ndim``; ``None`` means channels first (NCHW)."""
    first = {3: "NCW", 4: "NCHW", 5: "NCDHW"}
    last = {3: "NWC", 4: "NHWC", 5: "NDHWC"}
    if ndim not in first:
        raise ValueError(f"data must be 3-D, 4-D or 5-D (batch, channel, spatial...), "
                         f"got rank {ndim}")
    if layout is None or layout == first[ndim]:
        return first[ndim], False
    if layout == last[ndim]:
        return last[ndim], True
    raise ValueError(f"layout {layout!r} does not fit data of rank {ndim}: expected "
                     f"{first[ndim]!r} or {last[ndim]!r}")
