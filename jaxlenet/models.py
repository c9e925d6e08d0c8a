"""The tutorial's LeNets, and a layer-by-layer summary.

A model takes MXNet's layout, images (N, 1, 28, 28), and has MXNet's parameter layout
(``{'conv0': {'weight': (20, 1, 5, 5), 'bias': (20,)}, ...}``), but runs channels-last inside:
XLA:CPU's convolutions are several times faster in NHWC (see docs/performance.md). The layout is
invisible from outside; ``layout='NCHW'`` runs the plain formulation, for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlenet import initializers
from jaxlenet.layers import Conv, Dense, Flatten, Layer, Pool, serial

IMAGE_SHAPE = (1, 28, 28)


class Model(NamedTuple):
    """``init(key) -> params``; ``apply(params, images (N, 1, 28, 28)) -> logits (N, classes)``,
    images cast to the parameters' dtype (float32 from ``init``)."""
    name: str
    init: Callable
    apply: Callable
    layers: tuple[tuple[str, Layer], ...]
    layout: str


def _model(name: str, build: Callable[[str], tuple[tuple[str, Layer], ...]], layout: str) -> Model:
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout {layout!r} is not 'NHWC' or 'NCHW'")
    named_layers = build(layout)
    net = serial(*named_layers)
    channels_last = layout == "NHWC"

    def to_internal(images):
        return jnp.moveaxis(images, 1, -1) if channels_last else images

    def init(key):
        in_shape = (1,) + IMAGE_SHAPE
        if channels_last:
            in_shape = (1,) + IMAGE_SHAPE[1:] + IMAGE_SHAPE[:1]
        return net.init(key, in_shape)[1]

    def apply(params, images):
        if jnp.ndim(images) != 4 or tuple(jnp.shape(images)[1:]) != IMAGE_SHAPE:
            raise ValueError(f"images must be (N, {', '.join(map(str, IMAGE_SHAPE))}), got shape "
                             f"{jnp.shape(images)}")
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return net.apply(params, to_internal(jnp.asarray(images, dtype)))

    return Model(name, init, apply, tuple(named_layers), layout)


def lenet(*, weight_init=initializers.uniform(0.07), layout: str = "NHWC") -> Model:
    """The tutorial's LeNet: conv 20@5x5, ReLU, max-pool 2/2, conv 50@3x3, ReLU, max-pool 2/2,
    flatten, dense 128, ReLU, dense 10. Biases start at zero."""
    def build(L):
        return (("conv0", Conv(20, 5, activation="relu", weight_init=weight_init, layout=L)),
                ("pool0", Pool(2, layout=L)),
                ("conv1", Conv(50, 3, activation="relu", weight_init=weight_init, layout=L)),
                ("pool1", Pool(2, layout=L)),
                ("flatten0", Flatten(layout=L)),
                ("dense0", Dense(128, activation="relu", weight_init=weight_init)),
                ("dense1", Dense(10, weight_init=weight_init)))
    return _model("lenet", build, layout)


def lenet5(*, weight_init=initializers.xavier(), layout: str = "NHWC") -> Model:
    """The classic LeNet-5 of the tutorial: conv 6@5x5, sigmoid, max-pool 2/2, conv 16@5x5,
    sigmoid, max-pool 2/2, dense 120, sigmoid, dense 84, sigmoid, dense 10."""
    def build(L):
        return (("conv0", Conv(6, 5, activation="sigmoid", weight_init=weight_init, layout=L)),
                ("pool0", Pool(2, layout=L)),
                ("conv1", Conv(16, 5, activation="sigmoid", weight_init=weight_init, layout=L)),
                ("pool1", Pool(2, layout=L)),
                ("flatten0", Flatten(layout=L)),
                ("dense0", Dense(120, activation="sigmoid", weight_init=weight_init)),
                ("dense1", Dense(84, activation="sigmoid", weight_init=weight_init)),
                ("dense2", Dense(10, weight_init=weight_init)))
    return _model("lenet5", build, layout)


MODELS = {"lenet": lenet, "lenet5": lenet5}


def build(name: str, *, init: str | None = None, layout: str = "NHWC") -> Model:
    """A model by name, with an initialiser by name (``initializers.BY_NAME``) or its default."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} is not one of {tuple(MODELS)}")
    if init is None:
        return MODELS[name](layout=layout)
    if init not in initializers.BY_NAME:
        raise ValueError(f"init {init!r} is not one of {tuple(initializers.BY_NAME)}")
    return MODELS[name](weight_init=initializers.BY_NAME[init], layout=layout)


def summary(model: Model, batch_size: int = 1) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer name, output shape in MXNet's NCHW layout, parameter count) for every layer,
    parameter-free ones included, computed without data (``jax.eval_shape``)."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((batch_size,) + IMAGE_SHAPE, jnp.float32)
    x = jax.eval_shape(lambda images: jnp.moveaxis(images, 1, -1)
                       if model.layout == "NHWC" else images, x)
    rows = []
    for name, layer in model.layers:
        layer_params = params.get(name, {})
        x = jax.eval_shape(layer.apply, layer_params, x)
        shape = x.shape
        if model.layout == "NHWC" and len(shape) == 4:
            shape = (shape[0], shape[3], shape[1], shape[2])
        count = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(layer_params))
        rows.append((name, tuple(shape), count))
    return rows


def format_summary(model: Model, batch_size: int = 1) -> str:
    rows = summary(model, batch_size)
    lines = [f"{name} output shape:\t {shape}\t params: {count:,}" for name, shape, count in rows]
    lines.append(f"total params: {sum(count for _, _, count in rows):,}")
    return "\n".join(lines)
