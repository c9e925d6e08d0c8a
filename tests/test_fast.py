"""The fast implementation against the reference, through public names only: every formulation
in ``jaxlenet.fast`` gives the reference's values, gradients and errors (float64, where the XLA
formulations run; the C++ kernels are compared in test_fast_kernels.py), and a model gives the
same logits and gradients in either implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlenet import fast, layers, models
from jaxlenet.fast.conv2d import FEW_CHANNELS, MIN_FAST_FILTERS
from jaxlenet.losses import softmax_cross_entropy

RNG = np.random.default_rng(0)


def assert_same_values_and_gradients(fast_fn, reference_fn, *args, rtol=1e-12, atol=1e-12):
    """``fast_fn(*args)`` and ``reference_fn(*args)``: equal values, and equal cotangents for
    every argument under a random output cotangent (each side one compiled program)."""
    y_ref = jax.eval_shape(reference_fn, *args)
    ct = jnp.asarray(RNG.standard_normal(y_ref.shape), y_ref.dtype)

    @jax.jit
    def value_and_cotangents(fn, args, ct):
        y, vjp = jax.vjp(fn, *args)
        return y, vjp(ct)

    y_fast, ct_fast = value_and_cotangents(jax.tree_util.Partial(fast_fn), args, ct)
    y_ref, ct_ref = value_and_cotangents(jax.tree_util.Partial(reference_fn), args, ct)
    assert y_fast.shape == y_ref.shape
    np.testing.assert_allclose(y_fast, y_ref, rtol=rtol, atol=atol)
    for got, want in zip(jax.tree_util.tree_leaves(ct_fast), jax.tree_util.tree_leaves(ct_ref)):
        np.testing.assert_allclose(got, want, rtol=rtol * 100, atol=atol * 100)


# ------------------------------------------------------------------------------------ convolution


@pytest.mark.parametrize("kernel,pad", [((5, 5), (0, 0)), ((3, 3), (0, 0)), ((3, 2), (1, 2)),
                                        ((1, 1), (0, 0)), ((2, 3), (3, 1))])
@pytest.mark.parametrize("batch,channels,filters,width", [
    (3, 1, 5, 8),                                 # few channels and filters: the row matmul
    (3, 4, 3, 8),
    (2, 4, MIN_FAST_FILTERS + 3, 8),              # few channels, many filters: custom VJP
    (1, FEW_CHANNELS + 4, 3, 9),                  # many channels, filters zero-padded; batch 1
    (2, 1, 5, 66)])                               # too wide for the row matmul
def test_conv_equals_the_reference(kernel, pad, batch, channels, filters, width):
    x = jnp.asarray(RNG.standard_normal((batch, 9, width, channels)))
    w = jnp.asarray(RNG.standard_normal((filters, channels) + kernel))
    b = jnp.asarray(RNG.standard_normal(filters))
    assert_same_values_and_gradients(
        lambda x, w, b: fast.conv(x, w, b, padding=pad),
        lambda x, w, b: layers.conv(x, w, b, padding=pad, layout="NHWC"), x, w, b)


@pytest.mark.parametrize("options", [dict(stride=2), dict(dilation=(2, 1)), dict(groups=2),
                                     dict(stride=(1, 2), padding=1)])
def test_conv_with_stride_dilation_or_groups_equals_the_reference(options):
    x = jnp.asarray(RNG.standard_normal((2, 7, 8, 4)))
    w = jnp.asarray(RNG.standard_normal((6, 4 // options.get("groups", 1), 3, 3)))
    assert_same_values_and_gradients(
        lambda x, w: fast.conv(x, w, **options),
        lambda x, w: layers.conv(x, w, layout="NHWC", **options), x, w)


@pytest.mark.parametrize("kernel,pad,channels", [((3, 3), (0, 0), 20), ((5, 5), (2, 1), 1),
                                                 ((2, 3), (1, 0), 6)])
def test_conv_gradient_functions_equal_autodiff_of_the_reference(kernel, pad, channels):
    x = jnp.asarray(RNG.standard_normal((2, 8, 9, channels)))
    w = jnp.asarray(RNG.standard_normal((7, channels) + kernel))
    b = jnp.zeros(7)
    y, vjp = jax.vjp(lambda x, w, b: layers.conv(x, w, b, padding=pad, layout="NHWC"), x, w, b)
    dy = jnp.asarray(RNG.standard_normal(y.shape))
    want_x, want_w, want_b = vjp(dy)
    got_w, got_b = fast.conv_weight_and_bias_grads(x, dy, kernel, pad)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast.conv_input_grad(dy, w, pad), want_x, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("window,shape", [((2, 2), (2, 3, 8, 6)), ((2, 2), (2, 3, 7, 5)),
                                          ((3, 2), (1, 2, 9, 4)), (2, (1, 1, 2, 3))])
def test_max_pool_equals_the_reference_with_ties(layout, window, shape):
    """Values, and the first maximum of each window taking the gradient, ties included."""
    x = jnp.asarray(RNG.integers(0, 2, shape).astype(np.float64))
    if layout == "NHWC":
        x = jnp.moveaxis(x, 1, -1)
    assert_same_values_and_gradients(lambda v: fast.max_pool(v, window, layout=layout),
                                     lambda v: layers.pool(v, window, layout=layout), x)


# ------------------------------------------------------------------------- convolution + max pool


@pytest.mark.parametrize("activation", ["relu", "sigmoid", None])
@pytest.mark.parametrize("channels,kernel,pad,window,size,bias", [
    (1, (5, 5), 0, 2, (28, 28), True), (1, (3, 3), 1, 2, (9, 7), True),
    (2, (3, 2), (1, 0), (2, 2), (8, 9), False), (1, (2, 3), 0, (3, 2), (10, 9), True),
    (1, (1, 1), 0, 2, (5, 6), True), (8, (3, 3), 0, 1, (5, 5), True),
    (3, (3, 3), 0, 2, (8, 8), True)])             # 12 channels as blocks: not fused
def test_conv_max_pool_equals_the_layers_one_by_one(activation, channels, kernel, pad, window,
                                                    size, bias):
    """Small integers make exact ties and exact sums in any order: the same values and the same
    gradients (first maximum, relu'(0) = 0)."""
    x = jnp.asarray(RNG.integers(-2, 3, (2,) + size + (channels,)).astype(np.float64))
    w = jnp.asarray(RNG.integers(-1, 2, (3, channels) + kernel).astype(np.float64))
    b = jnp.asarray([0.0, 1.0, -1.0]) if bias else None

    def reference(x, w):
        y = layers.conv(x, w, b, padding=pad, layout="NHWC")
        return layers.pool(layers.activation(y, activation) if activation else y, window,
                           layout="NHWC")

    def fused(x, w):
        return fast.conv_max_pool(x, w, b, padding=pad, window=window, activation=activation)

    assert_same_values_and_gradients(fused, reference, x, w)
    # Undifferentiated, the fused ReLU and max run in the other order.
    np.testing.assert_allclose(jax.jit(fused)(x, w), reference(x, w), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------- layers


def test_fuse_conv_pool_fuses_a_convolution_and_the_block_max_pool_after_it():
    nn = fast.layers
    named = (("c0", nn.Conv(4, 3)), ("p0", nn.Pool(2)), ("c1", nn.Conv(4, 3)),
             ("p1", nn.Pool(2, kind="avg")), ("c2", nn.Conv(4, 1)), ("p2", nn.Pool(3, stride=1)),
             ("f", nn.Flatten()), ("d", nn.Dense(3)))
    fused = nn.fuse_conv_pool(named)
    assert [name for name, _ in fused] == ["c0", "c1", "p1", "c2", "p2", "f", "d"]
    key = jax.random.PRNGKey(0)
    x = jnp.asarray(RNG.standard_normal((2, 20, 20, 1)))
    out_shape, params = nn.serial(*named).init(key, x.shape)
    fused_shape, fused_params = nn.serial(*fused).init(key, x.shape)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(fused_params)
    assert out_shape == fused_shape
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    assert_same_values_and_gradients(nn.serial(*fused).apply, nn.serial(*named).apply, params, x)


@pytest.mark.parametrize("name", ["lenet", "lenet5"])
@pytest.mark.parametrize("batch", [1, 7])
def test_models_give_the_same_logits_and_gradients_in_both_implementations(name, batch):
    """float64: the fast implementation's XLA formulations against the reference."""
    fast_model = models.build(name, impl="fast", dtype=jnp.float64)
    reference = models.build(name, impl="reference", dtype=jnp.float64)
    assert (fast_model.impl, reference.impl) == ("fast", "reference")
    params = reference.init(jax.random.PRNGKey(0))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), params, fast_model.init(jax.random.PRNGKey(0))))
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 1, 28, 28), jnp.float64)
    y = jnp.arange(batch) % 10

    def loss(model):
        return lambda p: jnp.mean(softmax_cross_entropy(model.apply(p, x), y))

    np.testing.assert_allclose(jax.jit(fast_model.apply)(params, x),
                               jax.jit(reference.apply)(params, x), rtol=1e-10, atol=1e-12)
    for g_fast, g_ref in zip(jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(fast_model)))(params)),
                             jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reference)))(params))):
        np.testing.assert_allclose(g_fast, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["lenet", "lenet5"])
def test_float32_fast_models_agree_with_the_float64_reference(name):
    """float32 on the CPU: the C++ kernels where they are available."""
    fast_model = models.build(name, impl="fast", platform="cpu")
    reference = models.build(name, impl="reference", dtype=jnp.float64)
    params = fast_model.init(jax.random.PRNGKey(2))
    x = jax.random.uniform(jax.random.PRNGKey(3), (33, 1, 28, 28), jnp.float32)
    y = jnp.arange(33) % 10
    params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)

    def loss(model):
        return lambda p: jnp.mean(softmax_cross_entropy(model.apply(p, x), y))

    grad = jax.jit(jax.grad(loss(fast_model)), compiler_options=fast_model.compiler_options)
    np.testing.assert_allclose(jax.jit(fast_model.apply)(params, x),
                               jax.jit(reference.apply)(params64, x), rtol=1e-4, atol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(grad(params)),
                         jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reference)))(params64))):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("kernels_on", [False, True])
def test_float32_gradients_on_odd_sizes_agree_with_the_reference_with_the_kernels_on_and_off(
        kernels_on, monkeypatch):
    """Odd image sizes, odd and uneven kernels, padding, pooled rows left over: the float32
    program as it runs without the kernels (XLA's formulations: where they cannot be built, or
    with JAXLENET_CPU_KERNELS=0) and with them, against the float64 reference."""
    if kernels_on and not fast.kernels_available():
        pytest.skip("the C++ kernels cannot be built here")
    if not kernels_on:
        monkeypatch.setattr(fast.kernels, "available", lambda: False)

    def architecture(nn):
        return (("conv0", nn.Conv(6, (5, 3), padding=(1, 2), activation="relu")),
                ("pool0", nn.Pool(2)), ("conv1", nn.Conv(20, 3, activation="sigmoid")),
                ("pool1", nn.Pool((3, 2))), ("dense0", nn.Dense(10)))

    shape = (1, 27, 23)  # conv0 gives 25 x 25: pool0 leaves a row and a column over
    fast_model = models.from_layers(architecture, input_shape=shape, impl="fast", platform="cpu")
    reference = models.from_layers(architecture, input_shape=shape, impl="reference",
                                   dtype=jnp.float64)
    assert any("kernels" in where for where in fast_model.placement) == kernels_on
    params = fast_model.init(jax.random.PRNGKey(4))
    params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.uniform(jax.random.PRNGKey(5), (7,) + shape, jnp.float32)
    y = jnp.arange(7) % 10

    def loss(model):
        return lambda p: jnp.mean(softmax_cross_entropy(model.apply(p, x), y))

    grad = jax.jit(jax.grad(loss(fast_model)), compiler_options=fast_model.compiler_options)
    for got, want in zip(jax.tree_util.tree_leaves(grad(params)),
                         jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reference)))(params64))):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-5 * float(jnp.abs(want).max()))


def test_auto_is_fast_on_the_cpu_in_float32_and_the_reference_elsewhere():
    assert models.choose_impl("auto", platform="cpu") == "fast"
    assert models.choose_impl("auto", platform="gpu") == "reference"
    assert models.choose_impl("auto", platform="tpu") == "reference"
    assert models.choose_impl("auto", platform="cpu", dtype=jnp.float64) == "reference"
    assert models.choose_impl("fast", platform="gpu") == "fast"
    assert models.build("lenet", platform="gpu").compiler_options == {}
    with pytest.raises(ValueError, match="impl 'quick'"):
        models.choose_impl("quick")


@pytest.mark.parametrize("call,match", [
    (lambda: fast.conv(jnp.ones((1, 5, 5, 3)), jnp.ones((2, 2, 3, 3))), "input channels"),
    (lambda: fast.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 1, 5, 5))), "exceeds the input"),
    (lambda: fast.conv(jnp.ones((1, 5, 5, 1)), jnp.ones((2, 1, 3, 3)), jnp.ones(3)), "bias"),
    (lambda: fast.max_pool(jnp.ones((1, 5, 5, 1)), 6, layout="NHWC"), "exceeds the input"),
    (lambda: fast.conv_max_pool(jnp.ones((1, 5, 5, 1)), jnp.ones((2, 1, 3, 3)), window=4),
     "exceeds the input"),
    (lambda: fast.conv_max_pool(jnp.ones((1, 5, 5, 1), jnp.int32), jnp.ones((2, 1, 3, 3))),
     "floating"),
])
def test_fast_functions_raise_the_references_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
    with pytest.raises((ValueError, TypeError), match=match):
        jax.jit(call)()


@pytest.mark.parametrize("xla_convolutions", [True, False])
def test_compiler_options_change_speed_not_gradients(xla_convolutions):
    options = fast.compiler_options("cpu", xla_convolutions=xla_convolutions)
    assert options, "this jaxlib should accept jaxlenet's XLA:CPU options"
    model = models.build("lenet", impl="fast", platform="cpu")
    params = model.init(jax.random.PRNGKey(0))
    x = jnp.asarray(RNG.random((64, 1, 28, 28), np.float32))
    y = jnp.asarray(RNG.integers(0, 10, 64))
    grad = jax.grad(lambda p: jnp.mean(softmax_cross_entropy(model.apply(p, x), y)))
    tuned = jax.jit(grad, compiler_options=options)(params)
    for got, want in zip(jax.tree_util.tree_leaves(tuned),
                         jax.tree_util.tree_leaves(jax.jit(grad)(params))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert fast.compiler_options("gpu", xla_convolutions=xla_convolutions) == {}


def test_models_whose_convolutions_all_run_the_kernels_drop_ynnpacks_reductions():
    kernels = fast.kernels_available()
    for name in ("lenet", "lenet5"):
        assert models.build(name, impl="fast", platform="cpu").compiler_options == (
            fast.xla_options.KERNELS_CPU_OPTIONS if kernels else fast.xla_options.CPU_OPTIONS)
    strided = [("conv", fast.layers.Conv(4, 3, stride=2))]
    assert not fast.layers.convolutions_on_kernels(strided)
    assert fast.layers.convolutions_on_kernels([("conv", fast.layers.Conv(4, 3))]) == kernels
    assert models.build("lenet", impl="reference", platform="cpu").compiler_options == {}


def test_options_this_jaxlib_refuses_are_dropped():
    assert fast.xla_options.accepted({"xla_cpu_no_such_option": "1"}) == {}
    assert fast.xla_options.accepted(fast.xla_options.CPU_OPTIONS) == fast.compiler_options("cpu")


@pytest.mark.parametrize("init", ["xavier", "uniform", "normal"])
def test_the_init_programs_options_change_compile_time_not_parameters(init):
    model = models.build("lenet", init=init, impl="fast", platform="cpu")
    assert model.init_compiler_options == fast.xla_options.INIT_CPU_OPTIONS
    tuned = jax.jit(model.init, compiler_options=model.init_compiler_options)
    for seed in (0, 1, 2**31 + 7):
        key = jax.random.PRNGKey(seed)
        for got, want in zip(jax.tree_util.tree_leaves(tuned(key)),
                             jax.tree_util.tree_leaves(model.init(key))):
            np.testing.assert_array_equal(got, want)
    assert models.build("lenet", impl="fast", platform="gpu").init_compiler_options == {}
    assert models.build("lenet", impl="reference", platform="cpu").init_compiler_options == {}
