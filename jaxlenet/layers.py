"""The functional core, and the reference a learner reads: pure ops over arrays, and layers as
``(init, apply)`` pairs of pure functions.

Layouts follow MXNet: data (N, C, *spatial) unless ``layout`` says channels-last, convolution
weights (O, I/groups, *kernel), dense weights (out, in). Every op works under ``jit``, ``grad`` and
``vmap``; shape and argument checks run at trace time and raise ``ValueError``/``TypeError``.
Faster formulations of the same ops live beside this file, in ``jaxlenet.fast``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxlenet import _checks, initializers
from jaxlenet.pooling import pool

__all__ = [
    "conv", "pool", "dense", "flatten", "activation", "relu", "sigmoid", "tanh", "softrelu",
    "softsign", "corr2d", "Layer", "Conv", "Dense", "Pool", "Activation", "Flatten", "serial",
]

# --------------------------------------------------------------------------------------------- ops


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups: int = 1,
         layout: str | None = None):
    """Cross-correlation (no kernel flip) of ``x`` (N, C, *spatial) with ``weight`` (O, C/groups,
    *kernel), plus ``bias`` (O,). 1-, 2- and 3-D by the weight's rank. Output spatial size per dim:
    ``floor((x + 2p - d(k-1) - 1) / s) + 1``. Padding is symmetric zeros; ``groups`` splits channels
    and filters into contiguous blocks. ``layout='NHWC'`` (etc.) takes and returns channels-last
    data; the weight stays (O, I, *kernel)."""
    stride, padding, dilation, channels_last = _conv_arguments(x, weight, bias, stride, padding,
                                                               dilation, groups, layout)
    spatial = "DHW"[-len(stride):]
    data = "N" + spatial + "C" if channels_last else "NC" + spatial
    y = lax.conv_general_dilated(x, weight, window_strides=stride,
                                 padding=[(p, p) for p in padding], rhs_dilation=dilation,
                                 dimension_numbers=(data, "OI" + spatial, data),
                                 feature_group_count=groups)
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[data.index("C")] = -1
    return y + bias.reshape(shape)


def _conv_arguments(x, weight, bias, stride, padding, dilation, groups, layout):
    """``conv``'s arguments checked against each other and normalised: (stride, padding,
    dilation) as tuples, and whether the data is channels-last."""
    _checks.floating("data", x)
    _checks.floating("weight", weight)
    ndim = jnp.ndim(x)
    layout, channels_last = _checks.spatial_layout(layout, ndim)
    if jnp.ndim(weight) != ndim:
        raise ValueError(f"weight of shape {jnp.shape(weight)} must have the rank of data "
                         f"{jnp.shape(x)}: (out_channels, in_channels/groups, *kernel)")
    nsp = ndim - 2
    kernel = jnp.shape(weight)[2:]
    stride = _checks.positive("stride", _checks.as_tuple("stride", stride, nsp, default=1))
    dilation = _checks.positive("dilate", _checks.as_tuple("dilate", dilation, nsp, default=1))
    padding = _checks.as_tuple("pad", padding, nsp, default=0)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups {groups!r} must be a positive int")
    channels = jnp.shape(x)[-1 if channels_last else 1]
    out_channels, in_per_group = jnp.shape(weight)[:2]
    if channels % groups or out_channels % groups:
        raise ValueError(f"data channels ({channels}) and filters ({out_channels}) must both be "
                         f"divisible by groups ({groups})")
    if in_per_group * groups != channels:
        raise ValueError(f"weight {jnp.shape(weight)} expects {in_per_group * groups} input "
                         f"channels (groups={groups}), but data {jnp.shape(x)} has {channels}")
    sizes = jnp.shape(x)[1:-1] if channels_last else jnp.shape(x)[2:]
    for n, k, d, p in zip(sizes, kernel, dilation, padding):
        if d * (k - 1) + 1 > n + 2 * p:
            raise ValueError(f"kernel {tuple(kernel)} (dilate {dilation}) exceeds the input "
                             f"{tuple(sizes)} padded by {padding} (data {jnp.shape(x)})")
    if bias is not None and jnp.shape(bias) != (out_channels,):
        raise ValueError(f"bias of shape {jnp.shape(bias)} must be ({out_channels},), one per "
                         "filter")
    if jnp.result_type(x) != jnp.result_type(weight):
        raise TypeError(f"data ({jnp.result_type(x)}) and weight ({jnp.result_type(weight)}) "
                        "must have the same dtype")
    return stride, padding, dilation, channels_last


def flatten(x):
    """(d1, d2, ..., dk) -> (d1, d2*...*dk); a 1-D (n,) becomes (n, 1), as in MXNet."""
    if jnp.ndim(x) == 0:
        raise ValueError("flatten needs at least a 1-D array, got a scalar")
    return jnp.reshape(x, (jnp.shape(x)[0], -1)) if jnp.ndim(x) > 1 else jnp.reshape(x, (-1, 1))


def dense(x, weight, bias=None, *, flatten_input: bool = True):
    """``x @ weight.T + bias`` with ``weight`` (out, in) and ``bias`` (out,).

    ``flatten_input=True`` first flattens ``x`` to (N, in) (a 1-D (n,) counts as (n, 1));
    ``False`` maps the last axis and keeps the leading ones."""
    _checks.floating("data", x)
    if jnp.ndim(weight) != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {jnp.shape(weight)}")
    inputs = flatten(x) if flatten_input else x
    out_units, in_units = jnp.shape(weight)
    if jnp.ndim(inputs) == 0 or jnp.shape(inputs)[-1] != in_units:
        raise ValueError(f"weight {jnp.shape(weight)} expects {in_units} input features, "
                         f"data {jnp.shape(x)} gives {jnp.shape(inputs)[-1:]}")
    if bias is not None and jnp.shape(bias) != (out_units,):
        raise ValueError(f"bias of shape {jnp.shape(bias)} must be ({out_units},)")
    y = jnp.matmul(inputs, weight.T)
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (out_units,))


def relu(x):
    """max(x, 0) whose derivative is 1[x > 0]: 0 at 0, as in MXNet (``jnp.maximum`` gives 0.5)."""
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def sigmoid(x):
    return jax.nn.sigmoid(x)


def tanh(x):
    return jnp.tanh(x)


def softrelu(x):
    """log(1 + exp(x)), overflow-safe (softrelu(100) == 100)."""
    return jnp.logaddexp(x, jnp.zeros_like(x))


def softsign(x):
    return x / (1 + jnp.abs(x))


ACTIVATIONS: dict[str, Callable] = {
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softrelu": softrelu, "softsign": softsign}


def activation(x, kind: str):
    """Applies the activation named ``kind`` (one of ``ACTIVATIONS``)."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"act_type {kind!r} is not one of {tuple(ACTIVATIONS)}")
    _checks.floating("data", x)
    return ACTIVATIONS[kind](x)


def corr2d(X, K):
    """2-D cross-correlation of a 2-D ``X`` (h, w) with a 2-D kernel ``K`` (kh, kw):
    ``Y[i, j] = sum(X[i:i+kh, j:j+kw] * K)``, shape (h-kh+1, w-kw+1). Vectorised and jit-able."""
    X, K = jnp.asarray(X), jnp.asarray(K)
    if X.ndim != 2 or K.ndim != 2:
        raise ValueError(f"corr2d takes 2-D X and K, got shapes {X.shape} and {K.shape}")
    dtype = jnp.result_type(X, K, jnp.float32)
    return conv(X.astype(dtype)[None, None], K.astype(dtype)[None, None])[0, 0]


# ------------------------------------------------------------------------------------------ layers


class Layer(NamedTuple):
    """A layer: ``init(key, in_shape) -> (out_shape, params)`` and ``apply(params, x) -> y``;
    ``describe(in_shape)``, if given, is the layer as Gluon prints it (``print(net)``).

    Shapes include the batch axis; params are a dict of arrays (empty for parameter-free layers)."""
    init: Callable
    apply: Callable
    describe: Callable | None = None


def Conv(out_channels: int, kernel, *, stride=1, padding=0, dilation=1, groups: int = 1,
         activation: str | None = None, use_bias: bool = True,
         weight_init=initializers.uniform(0.07), bias_init=initializers.zeros,
         layout: str | None = None) -> Layer:
    """Convolution layer (Gluon's ``Conv2D``), optionally followed by ``activation``; params
    ``{'weight': (O, I/g, *k), 'bias': (O,)}`` whatever the data ``layout``."""
    _check_activation(activation)
    def init(key, in_shape):
        nsp = len(in_shape) - 2
        _, channels_last = _checks.spatial_layout(layout, len(in_shape))
        channels = in_shape[-1] if channels_last else in_shape[1]
        k = _checks.positive("kernel", _checks.as_tuple("kernel", kernel, nsp, default=1))
        w_shape = (out_channels, channels // groups) + k
        weight_key, bias_key = jax.random.split(key)
        params = {"weight": weight_init(weight_key, w_shape)}
        if use_bias:
            params["bias"] = bias_init(bias_key, (out_channels,))
        out = jax.eval_shape(lambda x, p: apply(p, x), jax.ShapeDtypeStruct(in_shape, jnp.float32),
                             params)
        return out.shape, params

    def apply(params, x):
        y = conv(x, params["weight"], params.get("bias"), stride=stride, padding=padding,
                 dilation=dilation, groups=groups, layout=layout)
        return ACTIVATIONS[activation](y) if activation else y

    def describe(in_shape):
        nsp = len(in_shape) - 2
        channels = in_shape[-1] if _checks.spatial_layout(layout, len(in_shape))[1] else in_shape[1]
        fields = [f"{channels} -> {out_channels}",
                  f"kernel_size={_checks.as_tuple('kernel', kernel, nsp, default=1)}",
                  f"stride={_checks.as_tuple('stride', stride, nsp, default=1)}"]
        for name, value, default in (("padding", padding, 0), ("dilation", dilation, 1)):
            if _checks.as_tuple(name, value, nsp, default=default) != (default,) * nsp:
                fields.append(f"{name}={_checks.as_tuple(name, value, nsp, default=default)}")
        fields += [f"groups={groups}"] * (groups != 1) + ["bias=False"] * (not use_bias)
        fields += [f"Activation({activation})"] * bool(activation)
        return f"Conv{nsp}D({', '.join(fields)})"

    return Layer(init, apply, describe)


def Dense(out_units: int, *, activation: str | None = None, use_bias: bool = True,
          weight_init=initializers.uniform(0.07), bias_init=initializers.zeros) -> Layer:
    """Fully connected layer on flattened input (Gluon's ``Dense``), optionally followed by
    ``activation``; params ``{'weight': (out, in), 'bias': (out,)}``."""
    _check_activation(activation)
    def init(key, in_shape):
        weight_key, bias_key = jax.random.split(key)
        params = {"weight": weight_init(weight_key, (out_units, math.prod(in_shape[1:])))}
        if use_bias:
            params["bias"] = bias_init(bias_key, (out_units,))
        return (in_shape[0], out_units), params

    def apply(params, x):
        y = dense(x, params["weight"], params.get("bias"))
        return ACTIVATIONS[activation](y) if activation else y

    def describe(in_shape):
        act = f"Activation({activation})" if activation else "linear"
        return f"Dense({math.prod(in_shape[1:])} -> {out_units}, {act})"

    return Layer(init, apply, describe)


def _stateless(fn: Callable, describe: Callable | None = None) -> Layer:
    def init(key, in_shape):
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(in_shape, jnp.float32))
        return out.shape, {}

    return Layer(init, lambda params, x: fn(x), describe)


def Pool(window, *, kind: str = "max", stride=None, padding=0, layout: str | None = None,
         **options) -> Layer:
    """Pooling layer (see ``pool``); ``stride`` defaults to ``window``, as in Gluon."""
    def describe(in_shape):
        nsp = len(in_shape) - 2
        size = _checks.as_tuple("kernel", window, nsp, default=1)
        steps = _checks.as_tuple("stride", stride, nsp, default=1) if stride is not None else size
        name = {"max": f"MaxPool{nsp}D", "avg": f"AvgPool{nsp}D"}.get(kind, "Pooling")
        return (f"{name}(size={size}, stride={steps}, "
                f"padding={_checks.as_tuple('pad', padding, nsp, default=0)}, "
                f"ceil_mode={options.get('convention', 'valid') == 'full'}, "
                f"global_pool={options.get('global_pool', False)}, pool_type={kind}, "
                f"layout={_checks.spatial_layout(layout, len(in_shape))[0]})")

    return _stateless(lambda x: pool(x, window, kind=kind, stride=stride, padding=padding,
                                     layout=layout, **options), describe)


def _check_activation(kind: str | None) -> None:
    if kind is not None and kind not in ACTIVATIONS:
        raise ValueError(f"activation {kind!r} is not one of {tuple(ACTIVATIONS)}")


def Activation(kind: str) -> Layer:
    _check_activation(kind)
    return _stateless(ACTIVATIONS[kind], lambda in_shape: f"Activation({kind})")


def Flatten(*, layout: str | None = None) -> Layer:
    """Flattens to (N, features) in channels-first order, also from channels-last data
    (``layout='NHWC'``), so dense weights are the same whatever layout the network runs in."""
    def fn(x):
        _, channels_last = _checks.spatial_layout(layout, x.ndim)
        if channels_last:
            x = jnp.moveaxis(x, -1, 1)
        return flatten(x)
    return _stateless(fn, lambda in_shape: "Flatten")


def serial(*named_layers: tuple[str, Layer]) -> Layer:
    """Composes ``(name, layer)`` pairs in order; params are ``{name: layer_params}`` for the layers
    that have parameters."""
    names = [name for name, _ in named_layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")

    def init(key, in_shape):
        params = {}
        for (name, layer), layer_key in zip(named_layers, jax.random.split(key, len(named_layers))):
            in_shape, layer_params = layer.init(layer_key, in_shape)
            if layer_params:
                params[name] = layer_params
        return in_shape, params

    def apply(params, x):
        for name, layer in named_layers:
            x = layer.apply(params.get(name, {}), x)
        return x

    return Layer(init, apply)
