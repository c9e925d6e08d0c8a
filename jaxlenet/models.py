"""The tutorial's LeNets, each in two implementations chosen once, when it is built: the reference
(``jaxlenet.layers``, MXNet's NCHW layout, XLA's plain formulations) and the fast one
(``jaxlenet.fast``: channels-last inside, the formulations XLA:CPU runs fastest). Both take
MXNet's images (N, 1, 28, 28) and share one parameter tree in MXNet's layout
(``{'conv0': {'weight': (20, 1, 5, 5), 'bias': (20,)}, ...}``) and the same initial values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlenet import fast, initializers, layers

IMAGE_SHAPE = (1, 28, 28)
IMPLS = ("auto", "reference", "fast")


class Model(NamedTuple):
    """``init(key) -> params``; ``apply(params, images (N, 1, 28, 28)) -> logits (N, classes)``,
    images cast to the parameters' dtype. ``impl`` is the implementation ``apply`` runs,
    ``layers`` the reference layers (for summaries), ``compiler_options`` what a ``jax.jit`` of a
    program running ``apply`` should pass, ``init_compiler_options`` what one whose work is
    ``init`` should (both empty for the reference). ``init`` is jitted without options, so that
    it can run inside any program."""
    name: str
    impl: str
    init: Callable
    apply: Callable
    layers: tuple[tuple[str, layers.Layer], ...]
    compiler_options: dict
    init_compiler_options: dict


def choose_impl(impl: str = "auto", *, platform: str | None = None, dtype=jnp.float32) -> str:
    """'reference' or 'fast'. 'auto' is 'fast' on the CPU in float32 (``platform`` defaults to
    JAX's default backend), and 'reference' on a GPU or TPU and in other dtypes."""
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    return "fast" if platform == "cpu" and jnp.dtype(dtype) == jnp.float32 else "reference"


def _model(name: str, architecture: Callable, impl: str, platform: str | None, dtype) -> Model:
    """``architecture(nn)`` lists the network's ``(name, layer)`` pairs built from ``nn``, which is
    ``jaxlenet.layers`` or ``jaxlenet.fast.layers`` (the same constructors)."""
    impl = choose_impl(impl, platform=platform, dtype=dtype)
    reference_layers = architecture(layers)
    reference = layers.serial(*reference_layers)
    options, init_options = {}, {}
    if impl == "fast":
        fast_layers = fast.layers.fuse_conv_pool(architecture(fast.layers))
        net = fast.layers.serial(*fast_layers)
        run = lambda params, images: net.apply(params, jnp.moveaxis(images, 1, -1))
        where = platform or jax.default_backend()
        on_kernels = where == "cpu" and fast.layers.convolutions_on_kernels(fast_layers)
        options = fast.compiler_options(where, xla_convolutions=not on_kernels)
        init_options = fast.init_compiler_options(where)
    else:
        run = reference.apply

    @jax.jit  # one program, not one per initialiser call
    def init(key):
        params = reference.init(key, (1,) + IMAGE_SHAPE)[1]
        return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)

    def apply(params, images):
        if jnp.ndim(images) != 4 or tuple(jnp.shape(images)[1:]) != IMAGE_SHAPE:
            raise ValueError(f"images must be (N, {', '.join(map(str, IMAGE_SHAPE))}), got shape "
                             f"{jnp.shape(images)}")
        param_dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return run(params, jnp.asarray(images, param_dtype))

    return Model(name, impl, init, apply, tuple(reference_layers), options, init_options)


def lenet(*, weight_init=initializers.uniform(0.07), impl: str = "auto",
          platform: str | None = None, dtype=jnp.float32) -> Model:
    """The tutorial's LeNet: conv 20@5x5, ReLU, max-pool 2/2, conv 50@3x3, ReLU, max-pool 2/2,
    flatten, dense 128, ReLU, dense 10. Biases start at zero."""
    def architecture(nn):
        return (("conv0", nn.Conv(20, 5, activation="relu", weight_init=weight_init)),
                ("pool0", nn.Pool(2)),
                ("conv1", nn.Conv(50, 3, activation="relu", weight_init=weight_init)),
                ("pool1", nn.Pool(2)),
                ("flatten0", nn.Flatten()),
                ("dense0", nn.Dense(128, activation="relu", weight_init=weight_init)),
                ("dense1", nn.Dense(10, weight_init=weight_init)))
    return _model("lenet", architecture, impl, platform, dtype)


def lenet5(*, weight_init=initializers.xavier(), impl: str = "auto",
           platform: str | None = None, dtype=jnp.float32) -> Model:
    """The classic LeNet-5 of the tutorial: conv 6@5x5, sigmoid, max-pool 2/2, conv 16@5x5,
    sigmoid, max-pool 2/2, dense 120 (which flattens its input, as Gluon's does), sigmoid, dense
    84, sigmoid, dense 10."""
    def architecture(nn):
        return (("conv0", nn.Conv(6, 5, activation="sigmoid", weight_init=weight_init)),
                ("pool0", nn.Pool(2)),
                ("conv1", nn.Conv(16, 5, activation="sigmoid", weight_init=weight_init)),
                ("pool1", nn.Pool(2)),
                ("dense0", nn.Dense(120, activation="sigmoid", weight_init=weight_init)),
                ("dense1", nn.Dense(84, activation="sigmoid", weight_init=weight_init)),
                ("dense2", nn.Dense(10, weight_init=weight_init)))
    return _model("lenet5", architecture, impl, platform, dtype)


MODELS = {"lenet": lenet, "lenet5": lenet5}


def build(name: str, *, init: str | None = None, impl: str = "auto", platform: str | None = None,
          dtype=jnp.float32) -> Model:
    """A model by name, with an initialiser by name (``initializers.BY_NAME``) or its default,
    in the implementation ``choose_impl(impl, platform=platform, dtype=dtype)`` picks."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} is not one of {tuple(MODELS)}")
    options = dict(impl=impl, platform=platform, dtype=dtype)
    if init is None:
        return MODELS[name](**options)
    if init not in initializers.BY_NAME:
        raise ValueError(f"init {init!r} is not one of {tuple(initializers.BY_NAME)}")
    return MODELS[name](weight_init=initializers.BY_NAME[init], **options)


def summary(model: Model, batch_size: int = 1) -> list[tuple[str, tuple[int, ...], int, str]]:
    """(layer name, output shape (MXNet's NCHW layout), parameter count, the layer as Gluon
    prints it) for every layer, parameter-free ones included, computed without data
    (``jax.eval_shape``)."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((batch_size,) + IMAGE_SHAPE, jnp.float32)
    rows = []
    for name, layer in model.layers:
        layer_params = params.get(name, {})
        description = layer.describe(x.shape) if layer.describe else name
        x = jax.eval_shape(layer.apply, layer_params, x)
        count = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(layer_params))
        rows.append((name, tuple(x.shape), count, description))
    return rows


def describe(model: Model, batch_size: int = 1) -> str:
    """The network as Gluon's ``print(net)`` lists it once its input shape is known."""
    return _listing(summary(model, batch_size))


def format_summary(model: Model, batch_size: int = 1) -> str:
    """``describe(model)``, then each layer's output shape and parameter count, as the
    tutorial's loop over ``net`` prints them."""
    rows = summary(model, batch_size)
    lines = [_listing(rows)]
    lines += [f"{name} output shape:\t {shape}\t params: {count:,}"
              for name, shape, count, _ in rows]
    lines.append(f"total params: {sum(count for _, _, count, _ in rows):,}")
    return "\n".join(lines)


def _listing(rows) -> str:
    return "\n".join(["Sequential("] + [f"  ({i}): {description}"
                                         for i, (_, _, _, description) in enumerate(rows)] + [")"])
