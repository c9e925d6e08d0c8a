"""The reference core: float64 NumPy loop references on random shapes, MXNet's pooling rules,
layer shape agreement, transformations, and bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def window_count(size, kernel, stride, pad, convention):
    """Windows along one dimension, counted one at a time from their definition (window i
    starts at i * stride in padded coordinates): 'valid' keeps those that end inside the padded
    input; 'full' adds windows until one reaches its end."""
    count = 0
    while True:
        if convention == "valid" and count * stride + kernel > size + 2 * pad:
            return count
        if convention == "full" and count and (count - 1) * stride + kernel >= size + 2 * pad:
            return count
        count += 1


def test_output_size_counts_the_windows_of_each_convention():
    for size, kernel, stride, pad in itertools.product(range(1, 12), range(1, 6), range(1, 5),
                                                       range(3)):
        if kernel <= size + 2 * pad and pad < kernel:
            for convention in ("valid", "full"):
                assert pooling.output_size(size, kernel, stride, pad, convention) == (
                    window_count(size, kernel, stride, pad, convention)), (
                    size, kernel, stride, pad, convention)


def pool_reference(x, kind, k, s, p, convention, count_include_pad=True, p_value=None):
    """MXNet's pooling written from its definition (mxnet-semantics.md §2.2-2.3), float64."""
    n, c, h, w = x.shape
    outs = [window_count(size, kk, ss, pp, convention)
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


# ----------------------------------------------------------------------------------- max pool


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
