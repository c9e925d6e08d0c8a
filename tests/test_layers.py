"""The functional core: float64 NumPy loop references on random shapes, the fast formulations
against the plain ones, layer shape agreement, transformations, and bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxlenet import initializers, layers, pooling

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------- NumPy references


def conv_reference(x, w, b, stride, pad, dilate, groups):
    """Direct 2-D cross-correlation loop, float64."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    ho = (h + 2 * pad[0] - dilate[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dilate[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for f in range(o):
        g = f // per_group
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * stride[0]:i * stride[0] + dilate[0] * (kh - 1) + 1:dilate[0],
                           j * stride[1]:j * stride[1] + dilate[1] * (kw - 1) + 1:dilate[1]]
                y[:, f, i, j] = np.sum(patch * w[f], axis=(1, 2, 3))
        if b is not None:
            y[:, f] += b[f]
    return y


def pool_reference(x, kind, k, s, p, convention, count_include_pad=True, p_value=None):
    """MXNet's pooling written from its definition (mxnet-semantics.md §2.2-2.3), float64."""
    n, c, h, w = x.shape
    outs = [pooling.output_size(size, kk, ss, pp, convention)
            for size, kk, ss, pp in zip((h, w), k, s, p)]
    y = np.zeros((n, c) + tuple(outs))
    for i, j in itertools.product(range(outs[0]), range(outs[1])):
        starts = (i * s[0] - p[0], j * s[1] - p[1])
        ends = (starts[0] + k[0], starts[1] + k[1])
        lo = [max(st, 0) for st in starts]
        hi = [min(en, size) for en, size in zip(ends, (h, w))]
        window = x[:, :, lo[0]:max(hi[0], lo[0]), lo[1]:max(hi[1], lo[1])]
        empty = window.size == 0
        if kind == "max":
            y[:, :, i, j] = np.finfo(np.float64).min if empty else window.max(axis=(2, 3))
        elif kind == "sum":
            y[:, :, i, j] = window.sum(axis=(2, 3))
        elif kind == "avg":
            if count_include_pad:
                d = np.prod([min(en, size + pp) - st
                             for st, en, size, pp in zip(starts, ends, (h, w), p)])
            else:
                d = np.prod([b - a for a, b in zip(lo, hi)])
            y[:, :, i, j] = window.sum(axis=(2, 3)) / d if d > 0 and not empty else 0
        else:
            total = (window ** p_value).sum(axis=(2, 3))
            root = {1: lambda t: t, 2: np.sqrt, 3: np.cbrt}[p_value]
            y[:, :, i, j] = root(total)
    return y


@pytest.mark.parametrize("seed", range(12))
def test_conv_matches_numpy_loop(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2]))
    c, o = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 4))
    k = tuple(int(v) for v in rng.integers(1, 4, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    dilate = tuple(int(v) for v in rng.integers(1, 3, 2))
    pad = tuple(int(v) for v in rng.integers(0, 3, 2))
    x = rng.standard_normal((2, c, 7, 8))
    w = rng.standard_normal((o, c // groups) + k)
    b = rng.standard_normal(o)
    expected = conv_reference(x, w, b, stride, pad, dilate, groups)
    got = layers.conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), stride=stride,
                      padding=pad, dilation=dilate, groups=groups)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    nhwc = layers.conv(jnp.moveaxis(jnp.asarray(x), 1, -1), jnp.asarray(w), jnp.asarray(b),
                       stride=stride, padding=pad, dilation=dilate, groups=groups, layout="NHWC")
    np.testing.assert_allclose(jnp.moveaxis(nhwc, -1, 1), expected, rtol=1e-10, atol=1e-10)


POOL_SPECS = [
    ("max", (2, 2), (2, 2), (0, 0), "valid"), ("max", (3, 3), (1, 1), (1, 1), "valid"),
    ("max", (2, 2), (2, 2), (1, 1), "full"), ("max", (3, 2), (2, 3), (1, 0), "full"),
    ("avg", (2, 2), (2, 2), (0, 0), "full"), ("avg", (3, 3), (3, 3), (1, 1), "full"),
    ("avg", (3, 2), (1, 2), (2, 1), "valid"), ("sum", (2, 3), (3, 1), (2, 2), "full"),
    ("lp", (2, 2), (1, 1), (1, 0), "valid"), ("lp", (3, 3), (2, 2), (0, 1), "full"),
]


@pytest.mark.parametrize("kind,k,s,p,convention", POOL_SPECS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_pool_matches_numpy_definition(kind, k, s, p, convention, count_include_pad):
    x = RNG.integers(-3, 4, (2, 3, 7, 6)).astype(np.float64)  # ties and zeros
    for p_value in ((1, 2, 3) if kind == "lp" else (None,)):
        expected = pool_reference(x, kind, k, s, p, convention, count_include_pad, p_value)
        got = layers.pool(jnp.asarray(x), k, kind=kind, stride=s, padding=p,
                          convention=convention, count_include_pad=count_include_pad,
                          p_value=p_value)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_global_pool_ignores_geometry():
    x = jnp.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    assert float(layers.pool(x, (9, 9), kind="sum", global_pool=True, convention="full")
                 .squeeze()) == 325.0
    assert float(layers.pool(x, kind="max", global_pool=True).squeeze()) == 25.0


# ------------------------------------------------------------------ fast paths vs plain formulation


@pytest.mark.parametrize("kernel,pad", [((5, 5), (0, 0)), ((3, 3), (0, 0)), ((3, 2), (1, 2)),
                                        ((1, 1), (0, 0)), ((2, 3), (3, 1))])
@pytest.mark.parametrize("channels,filters,width", [(1, 5, 8), (4, 3, 8), (4, 20, 8), (12, 3, 8),
                                                    (1, 5, 66)])
def test_fast_conv_gradients_equal_autodiff_of_plain_conv(kernel, pad, channels, filters, width):
    """Every formulation: the row matmul (few channels and filters, narrow images), and the
    custom VJP's weight gradients by planes (few channels; also wide images) and by patches
    (many channels), with filter counts on both sides of the zero-filter padding threshold."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 9, width, channels)))
    w = jnp.asarray(rng.standard_normal((filters, channels) + kernel))
    b = jnp.asarray(rng.standard_normal(filters))
    ct = jnp.asarray(rng.standard_normal(layers.conv(x, w, padding=pad, layout="NHWC").shape))

    def plain(x, w, b):
        y = lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (1, 1),
                                     [(p, p) for p in pad],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b[None, None, None]

    def fast(x, w, b):
        return layers.conv(x, w, b, padding=pad, layout="NHWC")

    y_fast, vjp_fast = jax.vjp(fast, x, w, b)
    y_plain, vjp_plain = jax.vjp(plain, x, w, b)
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(vjp_fast(ct), vjp_plain(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", None])
@pytest.mark.parametrize("channels,kernel,pad,window,size", [
    (1, (5, 5), 0, 2, (28, 28)), (1, (3, 3), 1, 2, (9, 7)), (2, (3, 2), (1, 0), (2, 2), (8, 9)),
    (1, (2, 3), 0, (3, 2), (10, 9)), (1, (1, 1), 0, 2, (5, 6)), (8, (3, 3), 0, 1, (5, 5))])
def test_conv_pool_fusion_equals_the_layers_one_by_one(activation, channels, kernel, pad, window,
                                                       size):
    """``serial`` runs a convolution and the max pool after it as one space-to-depth
    convolution: the same values and the same gradients (first maximum, relu'(0) = 0), ties
    included (small integers make exact ties and exact sums in any order)."""
    conv_layer = layers.Conv(3, kernel, padding=pad, activation=activation, layout="NHWC")
    pool_layer = layers.Pool(window, layout="NHWC")
    net = layers.serial(("conv", conv_layer), ("pool", pool_layer))
    x = jnp.asarray(RNG.integers(-2, 3, (2,) + size + (channels,)).astype(np.float64))
    params = {"conv": {"weight": jnp.asarray(RNG.integers(-1, 2, (3, channels) + kernel)
                                             .astype(np.float64)),
                       "bias": jnp.asarray([0.0, 1.0, -1.0])}}
    assert layers._fusible_pool(conv_layer, pool_layer, x, params["conv"]) is not None

    def one_by_one(params, x):
        return pool_layer.apply({}, conv_layer.apply(params["conv"], x))

    y_fused, vjp_fused = jax.vjp(net.apply, params, x)
    y_plain, vjp_plain = jax.vjp(one_by_one, params, x)
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-12, atol=1e-12)
    # Undifferentiated, the fused ReLU and max run in the other order (see _conv_max_relu).
    np.testing.assert_allclose(net.apply(params, x), y_plain, rtol=1e-12, atol=1e-12)
    ct = jnp.asarray(RNG.standard_normal(y_plain.shape))
    for got, want in zip(jax.tree_util.tree_leaves(vjp_fused(ct)),
                         jax.tree_util.tree_leaves(vjp_plain(ct))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_pool_fusion_without_bias():
    conv_layer = layers.Conv(3, 3, use_bias=False, activation="relu", layout="NHWC")
    pool_layer = layers.Pool(2, layout="NHWC")
    net = layers.serial(("conv", conv_layer), ("pool", pool_layer))
    x = jnp.asarray(RNG.standard_normal((2, 9, 9, 1)))
    params = {"conv": {"weight": jnp.asarray(RNG.standard_normal((3, 1, 3, 3)))}}
    assert layers._fusible_pool(conv_layer, pool_layer, x, params["conv"]) is not None
    np.testing.assert_allclose(net.apply(params, x),
                               pool_layer.apply({}, conv_layer.apply(params["conv"], x)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv_options,pool_options,channels", [
    ({}, {"kind": "avg"}, 1), ({"stride": 2}, {}, 1), ({"dilation": 2}, {}, 1),
    ({}, {"stride": 1}, 1), ({}, {"padding": 1}, 1), ({}, {"convention": "full"}, 1),
    ({}, {}, 3), ({"layout": None}, {"layout": None}, 1), ({"bias": 3}, {}, 1)])
def test_conv_pool_fusion_only_where_it_applies(conv_options, pool_options, channels):
    """Anything else runs unfused, including arguments the layers refuse (a bias of the wrong
    shape), so that the layers raise their own errors."""
    conv_options = dict(conv_options)
    bias = jnp.zeros(conv_options.pop("bias", 4))
    conv_layer = layers.Conv(4, 3, **{"layout": "NHWC", **conv_options})
    pool_layer = layers.Pool(2, **{"layout": "NHWC", **pool_options})
    x = jnp.zeros((1, 8, 8, channels)) if conv_options.get("layout", "NHWC") else jnp.zeros(
        (1, channels, 8, 8))
    params = {"weight": jnp.zeros((4, channels, 3, 3)), "bias": bias}
    assert layers._fusible_pool(conv_layer, pool_layer, x, params) is None
    if bias.shape != (4,):
        net = layers.serial(("conv", conv_layer), ("pool", pool_layer))
        with pytest.raises(ValueError, match="bias of shape"):
            net.apply({"conv": params}, x)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("window,shape", [((2, 2), (2, 3, 8, 6)), ((2, 2), (2, 3, 7, 5)),
                                          ((3, 2), (1, 2, 9, 4))])
def test_block_max_equals_reduce_window_with_ties(layout, window, shape):
    """The reshape-and-compare max pool (kernel == stride) gives the same values and the same
    first-maximum gradients as reduce_window's select-and-scatter, ties included."""
    x = jnp.asarray(RNG.integers(0, 2, shape).astype(np.float64))
    if layout == "NHWC":
        x = jnp.moveaxis(x, 1, -1)
    fast = lambda v: layers.pool(v, window, layout=layout)
    # A 'full' pool whose windows all fit takes the general reduce_window path.
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    crop = [slice(None)] * 4
    for axis, k in zip(axes, window):
        crop[axis] = slice(0, x.shape[axis] // k * k)
    plain = lambda v: layers.pool(v[tuple(crop)], window, layout=layout, convention="full")
    ct = jnp.asarray(RNG.standard_normal(fast(x).shape))
    np.testing.assert_array_equal(fast(x), plain(x))
    np.testing.assert_array_equal(jax.vjp(fast, x)[1](ct)[0], jax.vjp(plain, x)[1](ct)[0])


def test_max_pool_gradient_goes_to_first_maximum():
    ones = jnp.ones((1, 1, 4, 4))
    grad = jax.grad(lambda v: layers.pool(v, 2).sum())(ones)
    np.testing.assert_array_equal(grad[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0]] * 2)
    x = jnp.array([[[[1.0, 3, 3], [3, 2, 3], [0, 3, 1]]]])
    grad = jax.grad(lambda v: layers.pool(v, 2, stride=1).sum())(x)
    np.testing.assert_array_equal(grad[0, 0], [[0, 2, 0], [1, 0, 1], [0, 0, 0]])


# ------------------------------------------------------------------------------------ activations


def test_relu_gradient_is_zero_at_zero():
    grad = jax.grad(lambda v: layers.relu(v).sum())(jnp.array([-1.0, 0.0, -0.0, 2.0]))
    np.testing.assert_array_equal(grad, [0, 0, 0, 1])


def test_softrelu_is_overflow_safe():
    y = layers.activation(jnp.array([100.0, -100.0, 0.0], jnp.float32), "softrelu")
    np.testing.assert_allclose(y, [100.0, 0.0, np.log(2.0)], rtol=1e-6)
    grad = jax.grad(lambda v: layers.softrelu(v).sum())(jnp.array([-100.0, 0.0]))
    np.testing.assert_allclose(grad, [0.0, 0.5], atol=1e-30)


def test_corr2d_is_the_tutorial_cross_correlation():
    X = jnp.arange(9.0).reshape(3, 3)
    K = jnp.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(layers.corr2d(X, K), [[19, 25], [37, 43]])
    grad = jax.grad(lambda k: layers.corr2d(X, k).sum())(K)
    np.testing.assert_array_equal(grad, [[8, 12], [20, 24]])
    np.testing.assert_array_equal(jax.jit(layers.corr2d)(X, K), [[19, 25], [37, 43]])


def test_flatten_and_dense_follow_mxnet():
    assert layers.flatten(jnp.ones(5)).shape == (5, 1)
    assert layers.flatten(jnp.ones((2, 16, 5, 5))).shape == (2, 400)
    x = jnp.asarray(RNG.standard_normal((2, 3, 4)))
    w = jnp.asarray(RNG.standard_normal((6, 12)))
    np.testing.assert_allclose(layers.dense(x, w), x.reshape(2, 12) @ w.T)
    w4 = jnp.asarray(RNG.standard_normal((5, 4)))
    assert layers.dense(x, w4, flatten_input=False).shape == (2, 3, 5)


# --------------------------------------------------------------------------- layers and transforms


@pytest.mark.parametrize("layer,in_shape", [
    (layers.Conv(7, 3, stride=2, padding=1), (2, 3, 11, 9)),
    (layers.Conv(4, (3, 1), layout="NHWC", activation="relu"), (2, 8, 6, 3)),
    (layers.Conv(6, 3, groups=2, dilation=2), (1, 4, 9, 9)),
    (layers.Pool(2), (3, 5, 8, 8)),
    (layers.Pool(3, kind="avg", stride=2, padding=1, convention="full"), (1, 2, 7, 7)),
    (layers.Dense(10, activation="sigmoid"), (4, 3, 5, 5)),
    (layers.Flatten(layout="NHWC"), (2, 4, 4, 3)),
])
def test_init_predicts_the_shape_apply_gives(layer, in_shape):
    out_shape, params = layer.init(jax.random.PRNGKey(0), in_shape)
    y = layer.apply(params, jnp.ones(in_shape, jnp.float32))
    assert y.shape == tuple(out_shape)


def test_ops_work_under_jit_grad_and_vmap():
    w = jnp.asarray(RNG.standard_normal((4, 3, 3, 3)), jnp.float32)
    x = jnp.asarray(RNG.standard_normal((5, 2, 3, 8, 8)), jnp.float32)

    def f(x):
        return layers.pool(layers.relu(layers.conv(x, w)), 2, kind="avg").sum()

    batched = jax.vmap(jax.jit(jax.grad(f)))(x)
    one_by_one = jnp.stack([jax.grad(f)(xi) for xi in x])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_xavier_matches_mxnet_scale():
    w = initializers.xavier()(jax.random.PRNGKey(0), (50, 20, 3, 3))
    bound = np.sqrt(3.0 / ((20 * 9 + 50 * 9) / 2))
    assert float(jnp.abs(w).max()) <= bound
    assert float(jnp.abs(w).max()) > 0.95 * bound
    u = initializers.uniform(0.07)(jax.random.PRNGKey(1), (1000,))
    assert 0.065 < float(jnp.abs(u).max()) <= 0.07
    n = initializers.normal(0.01)(jax.random.PRNGKey(2), (20000,))
    assert abs(float(jnp.std(n)) - 0.01) < 3e-4


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,match", [
    (lambda: layers.conv(jnp.ones((1, 3, 5, 5)), jnp.ones((2, 2, 3, 3))), "input channels"),
    (lambda: layers.conv(jnp.ones((1, 1, 4, 4)), jnp.ones((2, 1, 5, 5))), "exceeds the input"),
    (lambda: layers.conv(jnp.ones((1, 1, 5, 5)), jnp.ones((2, 1, 3, 3)), stride=0), "stride"),
    (lambda: layers.conv(jnp.ones((1, 5, 5)), jnp.ones((2, 1, 3, 3))), "rank"),
    (lambda: layers.conv(jnp.ones((1, 1, 5, 5)), jnp.ones((2, 1, 3, 3)), jnp.ones(3)), "bias"),
    (lambda: layers.conv(jnp.ones((1, 1, 5, 5), jnp.int32), jnp.ones((2, 1, 3, 3))), "floating"),
    (lambda: layers.pool(jnp.ones((1, 1, 5, 5)), 2, kind="median"), "median"),
    (lambda: layers.pool(jnp.ones((1, 1, 5, 5)), 6), "exceeds the input"),
    (lambda: layers.pool(jnp.ones((1, 1, 5, 5)), 2, kind="lp", p_value=4), "p_value"),
    (lambda: layers.activation(jnp.ones(3), "gelu"), "gelu"),
    (lambda: layers.dense(jnp.ones((2, 5)), jnp.ones((3, 4))), "input features"),
])
def test_bad_input_raises_a_clear_error_at_trace_time(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
    with pytest.raises((ValueError, TypeError), match=match):
        jax.jit(call)()
