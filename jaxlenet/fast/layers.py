"""The fast implementation's layers: the reference layers' constructors, arguments and parameters
(``jaxlenet.layers``), for channels-last data, applied through ``jaxlenet.fast``'s formulations;
and ``fuse_conv_pool``, the rewrite that runs a convolution and its max pool as one layer.

A network of these layers has the reference network's parameter tree and initial values; it takes
(N, H, W, C) data where the reference takes (N, C, H, W)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxlenet import initializers, layers
from jaxlenet.fast import kernels
from jaxlenet.fast.conv2d import conv
from jaxlenet.fast.conv_pool import conv_max_pool
from jaxlenet.fast.pool import max_pool
from jaxlenet.layers import serial

__all__ = ["Conv", "Pool", "Dense", "Activation", "Flatten", "fuse_conv_pool", "channels_last",
           "convolutions_on_kernels", "placement", "serial"]

_LAYOUT = "NHWC"


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """``reference`` (a channels-last ``layers.Conv``) applied through ``fast.conv``."""
    reference: layers.Layer
    stride: int | tuple[int, int]
    padding: int | tuple[int, int]
    dilation: int | tuple[int, int]
    groups: int
    activation: str | None

    @property
    def plain(self) -> bool:
        """Stride 1, no dilation, one group: the convolutions the C++ kernels and the fused
        conv-pool layer take."""
        return self.stride in (1, (1, 1)) and self.dilation in (1, (1, 1)) and self.groups == 1

    def init(self, key, in_shape):
        return self.reference.init(key, in_shape)

    def apply(self, params, x):
        y = conv(x, params["weight"], params.get("bias"), stride=self.stride,
                 padding=self.padding, dilation=self.dilation, groups=self.groups)
        return layers.ACTIVATIONS[self.activation](y) if self.activation else y


def Conv(out_channels: int, kernel, *, stride=1, padding=0, dilation=1, groups: int = 1,
         activation: str | None = None, use_bias: bool = True,
         weight_init=initializers.uniform(0.07), bias_init=initializers.zeros) -> ConvLayer:
    """``layers.Conv`` for channels-last 2-D data."""
    reference = layers.Conv(out_channels, kernel, stride=stride, padding=padding,
                            dilation=dilation, groups=groups, activation=activation,
                            use_bias=use_bias, weight_init=weight_init, bias_init=bias_init,
                            layout=_LAYOUT)
    return ConvLayer(reference, stride, padding, dilation, groups, activation)


@dataclasses.dataclass(frozen=True)
class PoolLayer:
    """``reference`` (a channels-last ``layers.Pool``); a max pool of non-overlapping, unpadded
    'valid' windows (``block_max``) runs through ``fast.max_pool``."""
    reference: layers.Layer
    window: int | tuple[int, ...]
    block_max: bool

    def init(self, key, in_shape):
        return self.reference.init(key, in_shape)

    def apply(self, params, x):
        if self.block_max:
            return max_pool(x, self.window, layout=_LAYOUT)
        return self.reference.apply(params, x)


def Pool(window, *, kind: str = "max", stride=None, padding=0, **options) -> PoolLayer:
    """``layers.Pool`` for channels-last data."""
    reference = layers.Pool(window, kind=kind, stride=stride, padding=padding, layout=_LAYOUT,
                            **options)
    block_max = (kind == "max" and stride in (None, window) and padding in (0, (0, 0), (0,) * 3)
                 and options.get("convention", "valid") == "valid"
                 and set(options) <= {"convention"})
    return PoolLayer(reference, window, block_max)


class ChannelsLastLayer(layers.Layer):
    """A ``layers.Layer`` that takes channels-last data: one of this module's."""


def Dense(out_units: int, **options) -> ChannelsLastLayer:
    """``layers.Dense`` for channels-last data: it flattens (N, H, W, C) in channels-first
    order, as the reference flattens (N, C, H, W), so its weight is the reference's."""
    reference = layers.Dense(out_units, **options)

    def apply(params, x):
        return reference.apply(params, jnp.moveaxis(x, -1, 1) if x.ndim > 2 else x)

    return ChannelsLastLayer(reference.init, apply, reference.describe)


def Flatten() -> ChannelsLastLayer:
    """``layers.Flatten`` for channels-last data: (N, features) in channels-first order, so dense
    weights are the reference's."""
    return ChannelsLastLayer(*layers.Flatten(layout=_LAYOUT))


def Activation(kind: str) -> ChannelsLastLayer:
    """``layers.Activation``: element by element, so the same on any layout."""
    return ChannelsLastLayer(*layers.Activation(kind))


_FAST_LAYERS = (ConvLayer, PoolLayer, ChannelsLastLayer)


def _to_channels_first(shape):
    return (shape[0], shape[-1], *shape[1:-1]) if len(shape) > 2 else tuple(shape)


def _to_channels_last(shape):
    return (shape[0], *shape[2:], shape[1]) if len(shape) > 2 else tuple(shape)


@dataclasses.dataclass(frozen=True)
class ChannelsFirst:
    """A layer written for channels-first data (a reference layer, or one of your own) in a
    channels-last network: images are moved to (N, C, H, W) and back around it."""
    layer: layers.Layer

    def init(self, key, in_shape):
        out_shape, params = self.layer.init(key, _to_channels_first(in_shape))
        return _to_channels_last(out_shape), params

    def apply(self, params, x):
        y = self.layer.apply(params, jnp.moveaxis(x, -1, 1) if x.ndim > 2 else x)
        return jnp.moveaxis(y, 1, -1) if y.ndim > 2 else y


def channels_last(named_layers):
    """``(name, layer)`` pairs with every layer that is not one of this module's (a reference
    layer, or one of your own) wrapped in ``ChannelsFirst``."""
    return tuple((name, layer if isinstance(layer, _FAST_LAYERS) else ChannelsFirst(layer))
                 for name, layer in named_layers)


@dataclasses.dataclass(frozen=True)
class ConvMaxPool:
    """A ``Conv`` and the block max ``Pool`` after it as one layer (``fast.conv_max_pool``),
    with the convolution's parameters."""
    conv: ConvLayer
    pool: PoolLayer

    def init(self, key, in_shape):
        out_shape, params = self.conv.init(key, in_shape)
        return self.pool.init(key, out_shape)[0], params

    def apply(self, params, x):
        if not self.conv.plain:
            return self.pool.apply({}, self.conv.apply(params, x))
        return conv_max_pool(x, params["weight"], params.get("bias"), padding=self.conv.padding,
                             window=self.pool.window, activation=self.conv.activation)


def fuse_conv_pool(named_layers):
    """Rewrites ``(name, layer)`` pairs: each ``Conv`` followed by a block max ``Pool`` becomes
    one ``ConvMaxPool`` under the convolution's name, and the pool's entry goes (it has no
    parameters), so the parameter tree stays the same."""
    fused = []
    for name, layer in named_layers:
        if (fused and isinstance(fused[-1][1], ConvLayer) and isinstance(layer, PoolLayer)
                and layer.block_max):
            fused[-1] = (fused[-1][0], ConvMaxPool(fused[-1][1], layer))
        else:
            fused.append((name, layer))
    return tuple(fused)


def placement(named_layers, *, platform: str = "cpu") -> tuple[str, ...]:
    """One line per ``(name, layer)`` pair of a fast network (after ``fuse_conv_pool``): what
    runs it on ``platform``."""
    on_kernels = platform == "cpu" and kernels.available()
    lines = []
    for name, layer in named_layers:
        if isinstance(layer, ConvMaxPool):
            where = ("convolution and max pool fused, C++ kernels" if on_kernels
                     and layer.conv.plain else "convolution and max pool fused, XLA")
        elif isinstance(layer, ConvLayer):
            where = "C++ kernels" if on_kernels and layer.plain else "XLA, channels-last"
        elif isinstance(layer, PoolLayer):
            where = "block max pool" if layer.block_max else "reference pool, channels-last"
        elif isinstance(layer, ChannelsFirst):
            where = "as written, channels-first"
        else:
            where = "XLA"
        lines.append(f"{name}: {where}")
    return tuple(lines)


def convolutions_on_kernels(named_layers) -> bool:
    """Whether every convolution of these ``(name, layer)`` pairs runs jaxlenet's C++ kernels on
    the CPU in float32 (stride 1, no dilation, one group, and the kernels ``available()``), so
    that XLA runs none."""
    convs = [layer.conv if isinstance(layer, ConvMaxPool) else layer for _, layer in named_layers
             if isinstance(layer, (ConvLayer, ConvMaxPool))]
    return kernels.available() and all(conv.plain for conv in convs)
