"""Models: a network (a spec, ``jaxlenet.specs``, such as the tutorial's LeNets, or layers defined
in code) in one of two implementations chosen once, when it is built: the reference
(``jaxlenet.layers``, MXNet's NCHW layout, XLA's plain formulations) and the fast one
(``jaxlenet.fast``: channels-last inside, the formulations XLA:CPU runs fastest). Both take
MXNet's images (N, C, H, W) and share one parameter tree in MXNet's layout
(``{'conv0': {'weight': (20, 1, 5, 5), 'bias': (20,)}, ...}``) and the same initial values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlenet import fast, initializers, layers, specs

IMAGE_SHAPE = (1, 28, 28)
IMPLS = ("auto", "reference", "fast")


class Model(NamedTuple):
    """``init(key) -> params``; ``apply(params, images (N, *input_shape)) -> logits (N,
    classes)``, images cast to the parameters' dtype. ``impl`` is the implementation ``apply``
    runs, ``layers`` the reference layers (for summaries), ``placement`` what runs each layer
    (one line per layer, for the training header), ``compiler_options`` what a ``jax.jit`` of a
    program running ``apply`` should pass, ``init_compiler_options`` what one whose work is
    ``init`` should (both empty for the reference). ``init`` is jitted without options, so that
    it can run inside any program. ``spec`` is the network as data (``jaxlenet.specs``), or None
    for a network defined in code (``from_layers``)."""
    name: str
    impl: str
    init: Callable
    apply: Callable
    layers: tuple[tuple[str, layers.Layer], ...]
    compiler_options: dict
    init_compiler_options: dict
    spec: dict | None = None
    input_shape: tuple[int, ...] = IMAGE_SHAPE
    placement: tuple[str, ...] = ()


def choose_impl(impl: str = "auto", *, platform: str | None = None, dtype=jnp.float32) -> str:
    """'reference' or 'fast'. 'auto' is 'fast' on the CPU in float32 (``platform`` defaults to
    JAX's default backend), and 'reference' on a GPU or TPU and in other dtypes."""
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    return "fast" if platform == "cpu" and jnp.dtype(dtype) == jnp.float32 else "reference"


def from_layers(architecture, *, name: str = "custom", input_shape=IMAGE_SHAPE,
                impl: str = "auto", platform: str | None = None, dtype=jnp.float32,
                spec: dict | None = None) -> Model:
    """A ``Model`` of a network defined in code, in the implementation ``choose_impl`` picks.

    ``architecture`` is a sequence of ``(name, layer)`` pairs (what ``layers.serial`` takes:
    ``jaxlenet.layers`` layers, or your own ``(init, apply)`` ones, on (N, C, H, W) data), or a
    function ``architecture(nn)`` returning them built from ``nn``, which is ``jaxlenet.layers``
    for the reference and ``jaxlenet.fast.layers`` for the fast implementation (the same
    constructors). In the fast implementation, each layer it has a fast form of runs that form;
    every other layer runs as written, on channels-first data. ``spec`` is the spec the layers
    were built from, if any (``build``): a checkpoint records it."""
    impl = choose_impl(impl, platform=platform, dtype=dtype)
    build = architecture if callable(architecture) else lambda nn: tuple(architecture)
    reference_layers = tuple(build(layers))
    reference = layers.serial(*reference_layers)
    input_shape = tuple(input_shape)
    options, init_options = {}, {}
    if impl == "fast":
        fast_layers = fast.layers.fuse_conv_pool(fast.layers.channels_last(build(fast.layers)))
        net = fast.layers.serial(*fast_layers)
        run = lambda params, images: net.apply(params, jnp.moveaxis(images, 1, -1))
        where = platform or jax.default_backend()
        on_kernels = where == "cpu" and fast.layers.convolutions_on_kernels(fast_layers)
        options = fast.compiler_options(where, xla_convolutions=not on_kernels)
        init_options = fast.init_compiler_options(where)
        placement = fast.layers.placement(fast_layers, platform=where)
    else:
        run = reference.apply
        placement = tuple(f"{layer_name}: reference" for layer_name, _ in reference_layers)

    @jax.jit  # one program, not one per initialiser call
    def init(key):
        params = reference.init(key, (1,) + input_shape)[1]
        return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)

    def apply(params, images):
        if jnp.ndim(images) != 1 + len(input_shape) or tuple(jnp.shape(images)[1:]) != input_shape:
            raise ValueError(f"images must be (N, {', '.join(map(str, input_shape))}), got shape "
                             f"{jnp.shape(images)}")
        param_dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return run(params, jnp.asarray(images, param_dtype))

    return Model(name, impl, init, apply, reference_layers, options, init_options, spec,
                 input_shape, placement)


def lenet(*, init: str | None = None, impl: str = "auto", platform: str | None = None,
          dtype=jnp.float32) -> Model:
    """The tutorial's LeNet (``specs.lenet``): conv 20@5x5, ReLU, max-pool 2/2, conv 50@3x3,
    ReLU, max-pool 2/2, flatten, dense 128, ReLU, dense 10; MXNet's uniform(0.07) init unless
    ``init`` names another. Biases start at zero."""
    return build("lenet", init=init, impl=impl, platform=platform, dtype=dtype)


def lenet5(*, init: str | None = None, impl: str = "auto", platform: str | None = None,
           dtype=jnp.float32) -> Model:
    """The classic LeNet-5 of the tutorial (``specs.lenet5``): conv 6@5x5, sigmoid, max-pool
    2/2, conv 16@5x5, sigmoid, max-pool 2/2, dense 120 (which flattens its input, as Gluon's
    does), sigmoid, dense 84, sigmoid, dense 10; Xavier init unless ``init`` names another."""
    return build("lenet5", init=init, impl=impl, platform=platform, dtype=dtype)


def build(model, *, init: str | None = None, impl: str = "auto", platform: str | None = None,
          dtype=jnp.float32) -> Model:
    """A model from a built-in name (``specs.BUILTIN``: lenet, lenet5, mlp) or a spec
    (``jaxlenet.specs``), weights drawn by the initialiser named ``init``
    (``initializers.BY_NAME``; default: the spec's), in the implementation
    ``choose_impl(impl, platform=platform, dtype=dtype)`` picks."""
    spec = specs.resolve(model)
    if init is not None and init not in initializers.BY_NAME:
        raise ValueError(f"init {init!r} is not one of {tuple(initializers.BY_NAME)}")
    weight_init = initializers.BY_NAME[init or spec["init"]]
    return from_layers(lambda nn: specs.build_layers(spec, nn, weight_init), name=spec["name"],
                       input_shape=tuple(spec["input"]), impl=impl, platform=platform,
                       dtype=dtype, spec=spec)


class LayerRow(NamedTuple):
    """One layer of ``summary``: its name, output shape (MXNet's NCHW layout, batch included),
    parameter count, forward FLOPs per image (``forward_flops``) and the layer as Gluon prints
    it."""
    name: str
    shape: tuple[int, ...]
    params: int
    flops: int
    description: str


def summary(model: Model, batch_size: int = 1) -> list[LayerRow]:
    """A ``LayerRow`` for every layer, parameter-free ones included, computed without data
    (``jax.eval_shape``). FLOPs are the spec's count (``specs.layer_flops``: a multiply-add is 2
    FLOPs); for a network defined in code, XLA's cost analysis of each reference layer."""
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((batch_size,) + model.input_shape, jnp.float32)
    flops = specs.layer_flops(model.spec) if model.spec is not None else None
    rows = []
    for index, (name, layer) in enumerate(model.layers):
        layer_params = params.get(name, {})
        description = layer.describe(x.shape) if layer.describe else name
        if flops is None:
            one = jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
            cost = jax.jit(layer.apply).lower(layer_params, one).cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            layer_flops = int((cost or {}).get("flops", 0) or 0)
        else:
            layer_flops = flops[index]
        x = jax.eval_shape(layer.apply, layer_params, x)
        count = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(layer_params))
        rows.append(LayerRow(name, tuple(x.shape), count, layer_flops, description))
    return rows


def forward_flops(model: Model) -> int:
    """The forward pass's FLOPs per image: the sum of ``summary``'s, from the spec alone where
    there is one (no tracing: every training run's header prints it)."""
    if model.spec is not None:
        return sum(specs.layer_flops(model.spec))
    return sum(row.flops for row in summary(model))


def describe(model: Model, batch_size: int = 1) -> str:
    """The network as Gluon's ``print(net)`` lists it once its input shape is known."""
    return _listing(summary(model, batch_size))


def format_summary(model: Model, batch_size: int = 1) -> str:
    """``describe(model)``, then each layer's output shape and parameter count, as the
    tutorial's loop over ``net`` prints them, with its forward FLOPs per image; then the
    totals."""
    rows = summary(model, batch_size)
    lines = [_listing(rows)]
    lines += [f"{row.name} output shape:\t {row.shape}\t params: {row.params:,}\t "
              f"FLOPs/image: {row.flops:,}" for row in rows]
    total = sum(row.flops for row in rows)
    lines.append(f"total params: {sum(row.params for row in rows):,}; forward FLOPs per image: "
                 f"{total:,} ({total / 1e6:.2f} MFLOPs; a multiply-add counts 2)")
    return "\n".join(lines)


def _listing(rows) -> str:
    return "\n".join(["Sequential("] + [f"  ({i}): {row.description}"
                                         for i, row in enumerate(rows)] + [")"])
