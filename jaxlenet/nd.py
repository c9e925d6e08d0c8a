"""MXNet 1.9.1's ``mx.nd`` ops, with MXNet's names, arguments, defaults, results and refusals.

A tutorial ports by replacing ``from mxnet import nd`` with ``from jaxlenet import nd``. This module
only translates arguments and enforces MXNet's rules; the maths lives in ``jaxlenet.layers``.
The traps it keeps: ``Pooling`` stride defaults to 1 (not the kernel), an int ``kernel`` means 1-D,
``stride``/``pad``/``dilate`` are never broadcast, ``FullyConnected`` weight is (num_hidden, in).
"""

from __future__ import annotations

import builtins
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet import layers, losses
from jaxlenet.pooling import POOL_KINDS

__all__ = ["Convolution", "Pooling", "FullyConnected", "Activation", "relu", "flatten", "Flatten",
           "SoftmaxCrossEntropyLoss", "dot", "arange", "array", "zeros", "ones", "zeros_like",
           "random", "random_normal", "random_uniform", "sum", "mean", "max", "argmax", "sqrt",
           "exp", "maximum", "one_hot", "log_softmax", "stack", "concat", "add_n"]


def _shape_arg(name: str, value, ndim: int | None = None) -> tuple[int, ...]:
    """MXNet's Shape parameter: an int is a 1-tuple; a given value needs ``ndim`` entries."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),)
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}") from None
    if ndim is not None and items and len(items) != ndim:
        raise ValueError(f"{name} {items} must have {ndim} entries, one per kernel dimension "
                         "(MXNet does not broadcast it)")
    return items


def _float_data(name: str, x):
    x = jnp.asarray(x)
    if x.dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"{name} has dtype {x.dtype}: MXNet's CPU operator supports only float32 "
                        "and float64")
    return x


def _spatial(data, kernel_ndim: int, what: str):
    if kernel_ndim not in (1, 2, 3):
        raise ValueError(f"{kernel_ndim}D {what} is not supported: kernel must have 1, 2 or 3 "
                         "entries")
    if data.ndim != kernel_ndim + 2:
        raise ValueError(f"data of shape {data.shape} should be {kernel_ndim + 2}-D for a "
                         f"{kernel_ndim}-D kernel (an int kernel means 1-D)")


def Convolution(data=None, weight=None, bias=None, kernel=None, stride=(), dilate=(), pad=(),
                num_filter=None, num_group=1, workspace=1024, no_bias=False, cudnn_tune=None,
                cudnn_off=False, layout=None):
    """``mx.nd.Convolution``: cross-correlation of data (N, C, *sp) with weight
    (num_filter, C/num_group, *kernel) plus bias (num_filter,). ``workspace`` and ``cudnn_*`` have
    no numeric effect."""
    del workspace, cudnn_tune, cudnn_off
    if kernel is None:
        raise ValueError("kernel is required, e.g. kernel=(3, 3)")
    if num_filter is None:
        raise ValueError("num_filter is required")
    kernel = _shape_arg("kernel", kernel)
    nsp = len(kernel)
    data, weight = _float_data("data", data), _float_data("weight", weight)
    _spatial(data, nsp, "convolution")
    if layout not in (None, {1: "NCW", 2: "NCHW", 3: "NCDHW"}[nsp]):
        raise ValueError(f"layout {layout!r} is not supported by MXNet's CPU Convolution: "
                         f"expected {({1: 'NCW', 2: 'NCHW', 3: 'NCDHW'}[nsp])!r}")
    if weight.dtype != data.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from data dtype {data.dtype}")
    expected = (num_filter, data.shape[1] // builtins.max(num_group, 1)) + kernel
    if weight.shape != expected:
        raise ValueError(f"weight of shape {weight.shape} does not match num_filter={num_filter}, "
                         f"num_group={num_group}, kernel={kernel}: expected {expected}")
    if no_bias and bias is not None:
        raise ValueError("bias was given with no_bias=True")
    if not no_bias and bias is None:
        raise ValueError("bias is required unless no_bias=True")
    if bias is not None:
        bias = _float_data("bias", bias)
        if bias.dtype != data.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from data dtype {data.dtype}")
    return layers.conv(data, weight, bias, stride=_shape_arg("stride", stride, nsp) or 1,
                       padding=_shape_arg("pad", pad, nsp) or 0,
                       dilation=_shape_arg("dilate", dilate, nsp) or 1, groups=num_group)


def Pooling(data=None, kernel=(), pool_type="max", global_pool=False, cudnn_off=False,
            pooling_convention="valid", stride=(), pad=(), p_value=None, count_include_pad=None,
            layout=None):
    """``mx.nd.Pooling``. Stride defaults to 1 and pad to 0; ``count_include_pad=None`` means True;
    ``'full'`` keeps windows that start in the padding or past the input (see
    ``jaxlenet.pooling``). ``'same'`` is refused, as in MXNet's default build."""
    del cudnn_off
    data = _float_data("data", data)
    if pool_type not in POOL_KINDS:
        raise ValueError(f"pool_type {pool_type!r} is not one of {POOL_KINDS}")
    if pooling_convention == "same":
        raise ValueError("pooling_convention 'same' is not supported (MXNet 1.9.1's CPU build "
                         "refuses it)")
    if pooling_convention not in ("valid", "full"):
        raise ValueError(f"pooling_convention {pooling_convention!r} is not 'valid' or 'full'")
    kernel = _shape_arg("kernel", kernel)
    if not kernel and not global_pool:
        raise ValueError("kernel is required unless global_pool=True (0-D pooling is not "
                         "supported)")
    nsp = len(kernel) if kernel else data.ndim - 2
    _spatial(data, nsp, "pooling")
    stride = _shape_arg("stride", stride, nsp) or (1,) * nsp
    pad = _shape_arg("pad", pad, nsp) or (0,) * nsp
    if any(k < 1 for k in kernel) or any(s < 1 for s in stride) or any(p < 0 for p in pad):
        raise ValueError(f"kernel {kernel} and stride {stride} must be positive and pad {pad} "
                         "non-negative")
    if pool_type == "lp" and p_value is None:
        raise ValueError("p_value is required for pool_type='lp' (1, 2 or 3)")
    channels_last = layout in ("NWC", "NHWC", "NDHWC")
    if not global_pool and not channels_last and _uses_onednn(pool_type, pooling_convention, data,
                                                              kernel, stride, pad):
        for k, p in zip(kernel, pad):
            if p >= k:
                raise ValueError(f"pad {pad} must be smaller than kernel {kernel} for "
                                 f"{pool_type} pooling with convention "
                                 f"{pooling_convention!r} (MXNet's oneDNN path)")
    return layers.pool(data, kernel or None, kind=pool_type, stride=stride, padding=pad,
                       convention=pooling_convention,
                       count_include_pad=True if count_include_pad is None else count_include_pad,
                       p_value=p_value, global_pool=global_pool, layout=layout)


def _uses_onednn(pool_type, convention, data, kernel, stride, pad) -> bool:
    """Whether MXNet 1.9.1 routes the call to oneDNN, which refuses pad >= kernel: max pooling,
    avg 'valid', and avg 'full' when every dim's windows fit the padded input exactly."""
    if pool_type == "max" or (pool_type == "avg" and convention == "valid"):
        return True
    if pool_type != "avg":
        return False
    sizes = data.shape[2:]
    return all((n + 2 * p - k) % s == 0 for n, k, s, p in zip(sizes, kernel, stride, pad))


def FullyConnected(data=None, weight=None, bias=None, num_hidden=None, no_bias=False, flatten=True):
    """``mx.nd.FullyConnected``: ``data @ weight.T + bias``, weight (num_hidden, in_units).
    ``flatten=True`` reshapes data to (N, -1) first; a 1-D (n,) counts as (n, 1)."""
    if num_hidden is None:
        raise ValueError("num_hidden is required")
    data, weight = _float_data("data", data), _float_data("weight", weight)
    if weight.ndim != 2 or weight.shape[0] != num_hidden:
        raise ValueError(f"weight of shape {weight.shape} must be (num_hidden={num_hidden}, "
                         "in_units)")
    if no_bias and bias is not None:
        raise ValueError("bias was given with no_bias=True")
    if not no_bias and bias is None:
        raise ValueError("bias is required unless no_bias=True")
    return layers.dense(data, weight, None if bias is None else _float_data("bias", bias),
                        flatten_input=flatten)


def Activation(data=None, act_type=None):
    """``mx.nd.Activation``; ``act_type`` is one of relu, sigmoid, tanh, softrelu, softsign."""
    if act_type is None:
        raise ValueError(f"act_type is required: one of {tuple(layers.ACTIVATIONS)}")
    return layers.activation(_float_data("data", data), act_type)


def relu(data=None):
    """``mx.nd.relu``, whose gradient at 0 is 0."""
    return layers.activation(_float_data("data", data), "relu")


def flatten(data=None):
    """``mx.nd.flatten``: (d1, d2*...*dk); a 1-D (n,) gives (n, 1)."""
    return layers.flatten(jnp.asarray(data))


Flatten = flatten


def dot(lhs, rhs):
    """``mx.nd.dot`` for 1-D and 2-D arrays: a matrix product."""
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    if lhs.shape[-1:] != rhs.shape[:1]:
        raise ValueError(f"dot: lhs {lhs.shape} and rhs {rhs.shape} do not align")
    return jnp.tensordot(lhs, rhs, axes=1)


class SoftmaxCrossEntropyLoss:
    """Gluon's ``SoftmaxCrossEntropyLoss``: ``loss(pred, label[, sample_weight])`` gives one value
    per sample (shape (batch,)), the mean over every axis but ``batch_axis``, not a batch mean.
    Sparse labels are truncated toward zero and clipped into [0, C-1], as MXNet does silently."""

    def __init__(self, axis=-1, sparse_label=True, from_logits=False, weight=None, batch_axis=0):
        self.axis, self.sparse_label, self.from_logits = axis, sparse_label, from_logits
        self.weight, self.batch_axis = weight, batch_axis

    def __call__(self, pred, label, sample_weight=None):
        pred = jnp.asarray(pred)
        loss = losses.softmax_cross_entropy(pred, label, axis=self.axis,
                                            sparse_label=self.sparse_label,
                                            from_logits=self.from_logits)
        loss = jnp.expand_dims(loss, self.axis % pred.ndim)
        if sample_weight is not None:
            loss = loss * jnp.asarray(sample_weight, loss.dtype)
        if self.weight is not None:
            loss = loss * self.weight
        batch_axis = self.batch_axis % loss.ndim
        axes = tuple(a for a in range(loss.ndim) if a != batch_axis)
        return jnp.mean(loss, axis=axes) if axes else loss


def _dtype(dtype):
    return jnp.float32 if dtype is None else jnp.dtype(dtype)


def arange(start, stop=None, step=1.0, repeat=1, ctx=None, dtype=None):
    """``mx.nd.arange``: float32 by default; each value ``repeat`` times."""
    del ctx
    values = jnp.arange(start, stop, step, dtype=_dtype(dtype))
    return jnp.repeat(values, repeat) if repeat != 1 else values


def array(source_array, ctx=None, dtype=None):
    """``mx.nd.array``: float32 unless ``dtype`` says otherwise (NumPy float64 input included)."""
    del ctx
    return jnp.asarray(np.asarray(source_array), _dtype(dtype))


def zeros(shape, ctx=None, dtype=None):
    del ctx
    return jnp.zeros(shape, _dtype(dtype))


def ones(shape, ctx=None, dtype=None):
    del ctx
    return jnp.ones(shape, _dtype(dtype))


# ------------------------------------------------------------------------------ random numbers
# jaxlenet keeps no global random state: each call takes ``key=``; without one it uses
# ``DEFAULT_KEY``, so the same call gives the same array (MXNet's ``mx.random.seed`` has no
# counterpart; split a key instead, see docs/from-mxnet.md).
DEFAULT_KEY = 0


def _random(sample, a, b, shape, dtype, out, key):
    """MXNet's sampler shapes: scalar parameters give ``shape`` (default (1,)); array
    parameters give their shape followed by ``shape``."""
    if out is not None:
        raise TypeError("out= is not supported: jaxlenet's arrays are immutable; use the result")
    key = jax.random.PRNGKey(DEFAULT_KEY) if key is None else key
    a, b = jnp.asarray(a, _dtype(dtype)), jnp.asarray(b, _dtype(dtype))
    if a.shape != b.shape:
        raise ValueError(f"the two parameters must have one shape, got {a.shape} and {b.shape}")
    draw = tuple(int(n) for n in np.atleast_1d(shape)) if shape is not None else ()
    if a.ndim == 0 and not draw:
        draw = (1,)
    values = sample(key, a.shape + draw, _dtype(dtype))
    index = (...,) + (None,) * len(draw)
    return a[index], b[index], values


def _uniform(low=0.0, high=1.0, shape=None, dtype=None, ctx=None, out=None, *, key=None):
    """``mx.nd.random.uniform``: U[low, high), float32 by default, ``shape`` (1,) by default."""
    del ctx
    low, high, u = _random(jax.random.uniform, low, high, shape, dtype, out, key)
    return low + (high - low) * u


def _normal(loc=0.0, scale=1.0, shape=None, dtype=None, ctx=None, out=None, *, key=None):
    """``mx.nd.random.normal``: N(loc, scale^2), float32 by default, ``shape`` (1,) by default."""
    del ctx
    loc, scale, z = _random(jax.random.normal, loc, scale, shape, dtype, out, key)
    return loc + scale * z


random = types.SimpleNamespace(uniform=_uniform, normal=_normal)


def random_normal(loc=0.0, scale=1.0, shape=(1,), ctx=None, dtype=None, *, key=None):
    """``mx.nd.random_normal``, the older name of ``random.normal``."""
    return _normal(loc, scale, shape, dtype, ctx, key=key)


def random_uniform(low=0.0, high=1.0, shape=(1,), ctx=None, dtype=None, *, key=None):
    """``mx.nd.random_uniform``, the older name of ``random.uniform``."""
    return _uniform(low, high, shape, dtype, ctx, key=key)


# ---------------------------------------------------------------------------- math and shapes


def _values(data):
    """An array; comparisons (bool in JAX, float32 0/1 in MXNet) count as float32."""
    data = jnp.asarray(data)
    return data.astype(jnp.float32) if data.dtype == jnp.bool_ else data


def _reduction_axes(data, axis, exclude: bool) -> tuple[int, ...]:
    """MXNet's ``axis``: None or () is every axis; an int or a tuple of ints, negative from the
    end; ``exclude=True`` reduces the axes *not* named."""
    if axis is None or axis == ():
        named = tuple(range(data.ndim))
        return () if exclude else named
    named = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in named:
        if not -data.ndim <= a < data.ndim:
            raise ValueError(f"axis {axis} is out of range for data of shape {data.shape}")
    named = tuple(sorted({a % data.ndim for a in named}))
    return tuple(a for a in range(data.ndim) if a not in named) if exclude else named


def _reduce(reduction, data, axis, keepdims, exclude):
    data = _values(data)
    y = reduction(data, _reduction_axes(data, axis, exclude), keepdims)
    return y.reshape(1) if y.ndim == 0 else y  # MXNet's full reduction has shape (1,)


def sum(data=None, axis=None, keepdims=False, exclude=False):  # the builtin: builtins.sum
    """``mx.nd.sum``; a full reduction gives shape (1,), as in MXNet."""
    return _reduce(lambda x, axes, keep: jnp.sum(x, axes, keepdims=keep), data, axis, keepdims,
                   exclude)


def mean(data=None, axis=None, keepdims=False, exclude=False):
    """``mx.nd.mean``; a full reduction gives shape (1,); integer data keeps its dtype (the
    mean truncated toward zero), as in MXNet."""
    def reduction(x, axes, keep):
        y = jnp.mean(x, axes, keepdims=keep)
        return y.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.integer) else y
    return _reduce(reduction, data, axis, keepdims, exclude)


def max(data=None, axis=None, keepdims=False, exclude=False):  # the builtin: builtins.max
    """``mx.nd.max``; a full reduction gives shape (1,). Its gradient goes whole to *every*
    element equal to the maximum, as in MXNet (JAX's ``jnp.max`` splits it among ties)."""
    return _reduce(_max_to_every_tie, data, axis, keepdims, exclude)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_to_every_tie(x, axes, keepdims):
    return jnp.max(x, axes, keepdims=keepdims)


def _max_fwd(x, axes, keepdims):
    y = jnp.max(x, axes, keepdims=keepdims)
    return y, (x, y)


def _max_bwd(axes, keepdims, residuals, cotangent):
    x, y = residuals
    if not keepdims:
        y, cotangent = jnp.expand_dims(y, axes), jnp.expand_dims(cotangent, axes)
    return (jnp.where(x == y, cotangent, jnp.zeros((), cotangent.dtype)),)


_max_to_every_tie.defvjp(_max_fwd, _max_bwd)


def argmax(data=None, axis=None, keepdims=False):
    """``mx.nd.argmax``: the index of the first maximum, in the data's dtype (float32 for
    float32 data), as MXNet returns it; ``axis=None`` searches the flattened data (shape (1,))."""
    data = _values(data)
    if axis is None:
        return jnp.argmax(data.reshape(-1)).astype(data.dtype).reshape(1)
    _reduction_axes(data, axis, False)
    return jnp.argmax(data, axis=axis, keepdims=keepdims).astype(data.dtype)


def sqrt(data=None):
    """``mx.nd.sqrt``: NaN for negative values."""
    return jnp.sqrt(_values(data))


def exp(data=None):
    return jnp.exp(_values(data))


def maximum(lhs, rhs):
    """``mx.nd.maximum``: elementwise, with broadcasting and scalars; where the two are equal the
    gradient goes to ``lhs``, as in MXNet."""
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    return jnp.where(lhs >= rhs, lhs, rhs)


def one_hot(indices=None, depth=None, on_value=1.0, off_value=0.0, dtype="float32"):
    """``mx.nd.one_hot``: (*indices.shape, depth); indices outside [0, depth) give a row of
    ``off_value``, as in MXNet (float indices are truncated toward zero)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth {depth!r} must be an int >= 0")
    indices = jnp.trunc(jnp.asarray(indices)).astype(jnp.int32)
    hot = indices[..., None] == jnp.arange(depth, dtype=jnp.int32).reshape(
        (1,) * indices.ndim + (depth,))
    return jnp.where(hot, on_value, off_value).astype(_dtype(dtype))


def log_softmax(data=None, axis=-1, temperature=None, dtype=None, use_length=False):
    """``mx.nd.log_softmax`` along ``axis``, of ``data / temperature`` if one is given."""
    if use_length:
        raise ValueError("use_length=True is not supported")
    data = _values(data)
    if temperature is not None:
        data = data / temperature
    y = jax.nn.log_softmax(data, axis=axis)
    return y if dtype is None else y.astype(dtype)


def zeros_like(data=None):
    return jnp.zeros_like(jnp.asarray(data))


def _arrays(name: str, arrays, num_args):
    if not arrays:
        raise ValueError(f"{name} needs at least one array")
    if num_args is not None and num_args != len(arrays):
        raise ValueError(f"num_args {num_args} does not match the {len(arrays)} arrays given")
    return [jnp.asarray(a) for a in arrays]


def stack(*data, axis=0, num_args=None):
    """``mx.nd.stack``: the arrays, all of one shape, along a new ``axis``."""
    arrays = _arrays("stack", data, num_args)
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"stack needs arrays of one shape, got {[a.shape for a in arrays]}")
    return jnp.stack(arrays, axis=axis)


def concat(*data, dim=1, num_args=None):
    """``mx.nd.concat``: the arrays joined along ``dim``, which defaults to 1 (not 0)."""
    arrays = _arrays("concat", data, num_args)
    others = {a.shape[:dim % a.ndim] + a.shape[dim % a.ndim + 1:] for a in arrays}
    if len({a.ndim for a in arrays}) != 1 or len(others) != 1:
        raise ValueError(f"concat along dim {dim} needs arrays that agree on every other "
                         f"dimension, got {[a.shape for a in arrays]}")
    return jnp.concatenate(arrays, axis=dim)


def add_n(*args, num_args=None):
    """``mx.nd.add_n``: the elementwise sum of arrays of one shape."""
    arrays = _arrays("add_n", args, num_args)
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"add_n needs arrays of one shape, got {[a.shape for a in arrays]}")
    total = arrays[0]
    for a in arrays[1:]:
        total = total + a
    return total
