"""The fast implementation's C++ CPU kernels against float64 references, and their build."""

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxlenet import fast, layers
from jaxlenet.fast import kernels


def _can_run_kernels():
    if platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("g++"):
        return False
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return "avx512f" in flags or ("avx2" in flags and "fma" in flags)


# Where they can run, they must (unless JAXLENET_CPU_KERNELS=0 turns them off for the whole
# run): a broken build would otherwise pass as the slow path.
needs_kernels = pytest.mark.skipif(
    not _can_run_kernels() or os.environ.get("JAXLENET_CPU_KERNELS") == "0",
    reason="needs x86-64 with AVX-512 or AVX2 and FMA, and g++, and the kernels on")


@needs_kernels
def test_kernels_build_and_register():
    assert fast.kernels_available()


@pytest.mark.skipif(not _can_run_kernels(), reason="needs x86-64 with AVX2 and FMA, and g++")
def test_the_switch_picks_a_build_the_cpu_has(monkeypatch):
    with open("/proc/cpuinfo") as f:
        has_avx512 = "avx512f" in f.read()
    try:
        for value, want in (("avx2", "avx2"), ("AVX2", "avx2"),
                            ("1", "avx512" if has_avx512 else "avx2")):
            monkeypatch.setenv("JAXLENET_CPU_KERNELS", value)
            kernels.instruction_set.cache_clear()
            assert kernels.instruction_set() == want
        monkeypatch.setenv("JAXLENET_CPU_KERNELS", "sse")
        kernels.instruction_set.cache_clear()
        with pytest.warns(UserWarning, match="JAXLENET_CPU_KERNELS='sse' is not one of 0, 1"):
            assert kernels.instruction_set() in ("avx2", "avx512")
        if not has_avx512:
            monkeypatch.setenv("JAXLENET_CPU_KERNELS", "avx512")
            kernels.instruction_set.cache_clear()
            with pytest.warns(UserWarning, match="this CPU lacks it; the kernels run as with 1 "
                              r"\(avx2\)"):
                assert kernels.instruction_set() == "avx2"
    finally:
        monkeypatch.undo()
        kernels.instruction_set.cache_clear()


def _exact_conv(x, w, b, pad):
    """XLA's own convolution in float64, the reference for every kernel."""
    return lax.conv_general_dilated(
        x.astype(jnp.float64), jnp.transpose(w.astype(jnp.float64), (2, 3, 1, 0)), (1, 1),
        [(p, p) for p in pad], dimension_numbers=("NHWC", "HWIO", "NHWC")) + b[None, None, None]


SHAPES = [  # n, (h, w), channels, filters, kernel, padding
    (256, (12, 12), 20, 50, (3, 3), (0, 0)),  # LeNet's second convolution
    (256, (14, 14), 4, 80, (3, 3), (0, 0)),   # LeNet's first, as 2x2 blocks: by kernel taps
    (3, (7, 9), 9, 7, (3, 2), (1, 2)),        # filters not a multiple of 5, padding
    (2, (6, 5), 30, 1, (3, 3), (0, 1)),       # a kernel row of 90 floats: two chunks
    (1, (4, 4), 16, 11, (4, 4), (0, 0)),      # one output position
    (5, (5, 8), 9, 6, (1, 1), (2, 0)),
    (3, (9, 8), 1, 100, (5, 5), (1, 1)),      # one channel; 100 filters: two filter chunks
    (2, (6, 7), 3, 17, (2, 3), (0, 0)),       # by taps, a filter register one lane full
]


@needs_kernels
@pytest.mark.parametrize("n,size,channels,filters,kernel,pad", SHAPES)
def test_parameter_gradient_kernel_equals_float64_autodiff(n, size, channels, filters, kernel,
                                                           pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n,) + size + (channels,)), jnp.float32)
    out = tuple(s + 2 * p - k + 1 for s, p, k in zip(size, pad, kernel))
    dy = jnp.asarray(rng.standard_normal((n,) + out + (filters,)), jnp.float32)
    grads = jax.jit(lambda x, dy: fast.conv_weight_and_bias_grads(x, dy, kernel, pad))
    assert "jaxlenet_conv_param_grads" in grads.lower(x, dy).as_text()
    dw, db = grads(x, dy)
    w = jnp.zeros((filters, channels) + kernel, jnp.float64)
    b = jnp.zeros((filters,), jnp.float64)
    _, vjp = jax.vjp(lambda w, b: _exact_conv(x, w, b, pad), w, b)
    want_w, want_b = vjp(dy.astype(jnp.float64))
    for got, want in ((dw, want_w), (db, want_b)):
        assert got.dtype == jnp.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))


@needs_kernels
@pytest.mark.parametrize("n,size,channels,filters,kernel,pad", SHAPES)
def test_forward_kernel_equals_float64_convolution(n, size, channels, filters, kernel, pad):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((n,) + size + (channels,)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((filters, channels) + kernel), jnp.float32)
    b = jnp.asarray(rng.standard_normal(filters), jnp.float32)
    forward = jax.jit(lambda x, w, b: fast.conv(x, w, b, padding=pad))
    # Every stride-1 convolution takes it (the row matmul and XLA's convolution are for where
    # the kernels cannot run).
    assert "jaxlenet_conv_forward" in forward.lower(x, w, b).as_text()
    want = _exact_conv(x, w, b, pad)
    np.testing.assert_allclose(forward(x, w, b), want, rtol=0,
                               atol=2e-6 * float(jnp.max(jnp.abs(want))))


@needs_kernels
@pytest.mark.parametrize("n,size,channels,filters,kernel,pad,window", [
    (16, (28, 28), 1, 20, (5, 5), 0, 2),   # LeNet's first layer and pool
    (3, (9, 7), 1, 6, (3, 3), 1, 2),       # LeNet-5-like filters, padding, odd sizes
    (2, (8, 9), 2, 3, (3, 2), (1, 0), (2, 2)),
    (2, (10, 9), 1, 5, (2, 3), 0, (3, 2)),
    (2, (9, 12), 2, 3, (3, 5), 0, 2),      # kernel rows of 10 floats: two vectors with AVX2
    (3, (13, 10), 1, 4, (7, 3), 0, 2),     # 7 kernel rows: two register tiles of rows
    (4, (12, 12), 20, 50, (3, 3), 0, 2),   # LeNet's second layer: no blocks, the layers in turn
    (2, (11, 9), 6, 16, (5, 5), 2, 2),     # LeNet-5's second, padded, odd sizes
])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_fused_conv_pool_gradient_kernel_equals_the_layers_in_float64(n, size, channels, filters,
                                                                      kernel, pad, window,
                                                                      activation):
    """The fused layer's backward pass on the CPU (the first maximum's position and the
    activation's derivative there handed to the kernel) against the two layers one after the
    other in float64. Small integers make exact ties, so the first-maximum rule is tested too."""
    rng = np.random.default_rng(3)
    conv_layer = layers.Conv(filters, kernel, padding=pad, activation=activation, layout="NHWC")
    pool_layer = layers.Pool(window, layout="NHWC")
    net = fast.layers.serial(*fast.layers.fuse_conv_pool(
        (("conv", fast.layers.Conv(filters, kernel, padding=pad, activation=activation)),
         ("pool", fast.layers.Pool(window)))))
    x = rng.integers(-2, 3, (n,) + size + (channels,)).astype(np.float32)
    params = {"conv": {"weight": rng.integers(-1, 2, (filters, channels) + kernel).astype(
        np.float32), "bias": rng.integers(-1, 2, filters).astype(np.float32)}}
    ct = rng.integers(-3, 4, net.init(jax.random.PRNGKey(0), x.shape)[0]).astype(np.float32)

    def loss(params, x, apply):
        return jnp.sum(apply(params, x) * ct)

    grads = jax.jit(jax.grad(lambda p, x: loss(p, x, net.apply), argnums=(0, 1)))
    assert "jaxlenet_conv_pool_param_grads" in grads.lower(params, x).as_text()
    got = grads(params, x)
    want = jax.grad(lambda p, x: loss(p, x, lambda p, x: pool_layer.apply(
        {}, conv_layer.apply(p["conv"], x))), argnums=(0, 1))(
        jax.tree_util.tree_map(lambda a: a.astype(np.float64), params), x.astype(np.float64))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-3)  # integers: exact sums


@needs_kernels
@pytest.mark.parametrize("n,size,channels,filters,kernel,pad", SHAPES)
def test_input_gradient_kernel_equals_float64_autodiff(n, size, channels, filters,
                                                      kernel, pad):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n,) + size + (channels,))
    w = rng.standard_normal((filters, channels) + kernel)
    y, vjp = jax.vjp(lambda x: layers.conv(x, jnp.asarray(w), padding=pad, layout="NHWC"),
                     jnp.asarray(x))
    dy = rng.standard_normal(y.shape)
    want = vjp(jnp.asarray(dy))[0]
    grad = jax.jit(lambda dy, w: fast.conv_input_grad(dy, w, pad))
    dy32, w32 = jnp.asarray(dy, jnp.float32), jnp.asarray(w, jnp.float32)
    assert "jaxlenet_conv_input_grad" in grad.lower(dy32, w32).as_text()
    np.testing.assert_allclose(grad(dy32, w32), want, rtol=0,
                               atol=2e-6 * float(jnp.max(jnp.abs(want))) + 1e-6)


@needs_kernels
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("positions,filters", [(4, 20), (4, 6), (6, 3), (1, 9)])
def test_conv_max_forward_kernel_equals_the_xla_formulation(positions, filters, relu):
    """The max over each window's positions (with ``relu``, its ReLU) and the first position
    holding it, with exact ties (small integers)."""
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (3, 7, 8, 4)).astype(np.float32)
    w = rng.integers(-1, 2, (positions * filters, 4, 3, 3)).astype(np.float32)
    b = rng.integers(-1, 2, positions * filters).astype(np.float32)

    def by_xla(x, w, b):
        y = _conv_nhwc(x, w, b)
        return _max_and_first(y.reshape(y.shape[:3] + (positions, filters)), relu)

    forward = jax.jit(lambda x, w, b: kernels.conv_max_forward(x, w, b, positions, by_xla,
                                                               relu=relu))
    want_top, first = _kernel_equals(forward, by_xla, "jaxlenet_conv_max_forward", x, w, b)
    assert (np.asarray(want_top) < 0).any() != relu  # negative maxima, which the ReLU zeroes
    if positions > 1:  # the maxima lie at several positions, not always the first
        assert len(np.unique(np.asarray(first))) > 1


def _conv_nhwc(x, w, b=None):
    """XLA's stride-1 valid convolution of x (N, H, W, C) with w (O, C, kh, kw), plus b (O) if
    given."""
    y = lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if b is None else y + b[None, None, None]


def _max_and_first(y, relu):
    """The max over axis 3 of y (N, H, W, P, O), with ``relu`` its ReLU, and the first position
    holding it (P where none does: NaN), as the kernels promise them."""
    positions = y.shape[3]
    top = jnp.max(y, axis=3)
    position = jnp.arange(positions).reshape(1, 1, 1, positions, 1)
    first = jnp.min(jnp.where(y == top[:, :, :, None], position, positions), axis=3)
    return layers.relu(top) if relu else top, first.astype(jnp.int32)


def _kernel_equals(forward, by_xla, target, *args):
    """``forward`` calls the kernel ``target`` and gives by_xla's (top, first) exactly; returns
    them."""
    assert target in forward.lower(*args).as_text()
    (top, first), (want_top, want_first) = forward(*args), jax.jit(by_xla)(*args)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(first, want_first)
    return want_top, want_first


@needs_kernels
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("window,filters,size", [((2, 2), 50, (12, 12)), ((2, 2), 7, (9, 8)),
                                                 ((3, 2), 20, (10, 9)), ((1, 1), 9, (5, 4))])
def test_conv_pool_forward_kernel_equals_the_xla_formulation(window, filters, size, relu):
    """A convolution and the max pool over its non-overlapping windows (rows and columns left
    over where the windows do not divide the output), with exact ties (small integers): the
    max, with ``relu`` its ReLU, and the first position of the window holding it."""
    rng = np.random.default_rng(6)
    x = rng.integers(-2, 3, (3,) + size + (5,)).astype(np.float32)
    w = rng.integers(-1, 2, (filters, 5, 3, 3)).astype(np.float32)
    b = rng.integers(-1, 2, filters).astype(np.float32)
    (ph, pw) = window

    def by_xla(x, w, b):
        y = _conv_nhwc(x, w, b)
        n, ho, wo, o = y.shape
        windows = y[:, :ho // ph * ph, :wo // pw * pw].reshape(n, ho // ph, ph, wo // pw, pw, o)
        return _max_and_first(
            jnp.moveaxis(windows, 2, 3).reshape(n, ho // ph, wo // pw, ph * pw, o), relu)

    forward = jax.jit(lambda x, w, b: kernels.conv_pool_forward(x, w, b, window, by_xla,
                                                                relu=relu))
    want_top, first = _kernel_equals(forward, by_xla, "jaxlenet_conv_pool_forward", x, w, b)
    assert (np.asarray(want_top) < 0).any() != relu or window == (3, 2)
    if window != (1, 1):  # the maxima lie at several positions, not always the first
        assert len(np.unique(np.asarray(first))) > 1


def _kernel_close(fn, dense, target, *args):
    """``fn`` calls the kernel ``target`` and gives each of dense's arrays to float32 rounding
    (relative to the array's largest value)."""
    assert target in fn.lower(*args).as_text()
    for got, want in zip(jax.tree_util.tree_leaves(fn(*args)),
                         jax.tree_util.tree_leaves(jax.jit(dense)(*args))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def _pooled_cotangent(rng, n, out_hw, window, filters):
    """A max pool's (first, dmax) over a convolution's output of out_hw: first positions with
    some NaN maxima (first = ph * pw) and cotangents a third of them zero (a ReLU's, which the
    kernels skip), and the convolution's whole cotangent they stand for (zero but at the first
    maximum; rows and columns no window covers are 0)."""
    (ph, pw), (ho, wo) = window, out_hw
    hp, wp = ho // ph, wo // pw
    first = rng.integers(0, ph * pw + 1, (n, hp, wp, filters)).astype(np.int32)
    dmax = rng.standard_normal((n, hp, wp, filters)).astype(np.float32)
    dmax[rng.random(dmax.shape) < 1 / 3] = 0.0
    position = np.arange(ph * pw).reshape(1, 1, ph, 1, pw, 1)
    dy = np.where(position == first[:, :, None, :, None], dmax[:, :, None, :, None], 0.0)
    dy = dy.reshape(n, hp * ph, wp * pw, filters)
    dy = np.pad(dy, ((0, 0), (0, ho - hp * ph), (0, wo - wp * pw), (0, 0)))
    assert (first == ph * pw).any() and (dmax == 0).any()
    return first, dmax, dy.astype(np.float32)


@needs_kernels
@pytest.mark.parametrize("window,channels,size", [((2, 2), 20, (12, 12)), ((2, 2), 3, (9, 8)),
                                                  ((3, 2), 6, (10, 9)), ((1, 1), 9, (5, 4)),
                                                  ((2, 2), 60, (8, 8))])
def test_conv_pool_input_grad_kernel_equals_the_dense_input_gradient(window, channels, size):
    """The input gradient from each window's first maximum and its cotangent equals the input
    gradient of the convolution's whole cotangent (zero but at that position), computed as a
    transposed convolution by XLA; a window whose max is NaN (first = ph * pw) or whose
    cotangent is zero passes nothing, rows and columns no window reads get 0; kernel rows longer
    than the registers hold (60 channels) are added in blocks."""
    rng = np.random.default_rng(7)
    kernel, filters, n, (h, w) = (3, 3), 7, 2, size
    first, dmax, dy = _pooled_cotangent(rng, n, (h - 2, w - 2), window, filters)
    weight = rng.standard_normal((filters, channels) + kernel).astype(np.float32)

    def dense(first, dmax, weight):
        y_to_x = jax.linear_transpose(lambda x: _conv_nhwc(x, weight),
                                      jax.ShapeDtypeStruct((n, h, w, channels), jnp.float32))
        return y_to_x(dy)[0]

    grad = jax.jit(lambda f, m, wt: kernels.conv_pool_input_grad(
        f, m, wt, window, dense, input_shape=(n, h, w, channels)))
    _kernel_close(grad, dense, "jaxlenet_conv_pool_input_grad", first, dmax, weight)


@needs_kernels
@pytest.mark.parametrize("window,channels,size,kernel", [
    ((2, 2), 20, (12, 12), (3, 3)),   # LeNet's second layer
    ((2, 2), 1, (28, 28), (5, 5)),    # LeNet's first: rows of 5 floats
    ((2, 2), 1, (28, 28), (3, 3)),    # 3x3 kernels, odd outputs: the last row and column unpooled
    ((3, 2), 6, (10, 9), (3, 3)),
    ((2, 2), 3, (15, 11), (7, 3)),    # 7 kernel rows: more rows than a register tile holds
    ((2, 2), 60, (8, 8), (3, 3)),     # kernel rows of 180 floats: several passes along them
])
def test_conv_pool_param_grads_kernel_equals_the_dense_weight_gradient(window, channels, size,
                                                                      kernel):
    """The weight and bias gradients from each window's first maximum and its cotangent equal
    those of the convolution's whole cotangent, computed by XLA; windows whose max is NaN or
    whose cotangent is zero pass nothing."""
    rng = np.random.default_rng(8)
    filters, n, (h, w) = 7, 3, size
    out_hw = (h - kernel[0] + 1, w - kernel[1] + 1)
    first, dmax, dy = _pooled_cotangent(rng, n, out_hw, window, filters)
    x = rng.standard_normal((n, h, w, channels)).astype(np.float32)

    def dense(x, first, dmax):
        weight = jnp.zeros((filters, channels) + kernel, jnp.float32)
        return (jax.vjp(lambda wt: _conv_nhwc(x, wt), weight)[1](dy)[0],
                jnp.sum(dy, axis=(0, 1, 2)))

    grads = jax.jit(lambda x, f, m: kernels.conv_pool_param_grads(x, f, m, kernel, window,
                                                                  dense))
    _kernel_close(grads, dense, "jaxlenet_conv_pool_param_grads", x, first, dmax)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64")
                    or not shutil.which("g++"), reason="needs x86-64 and g++")
def test_kernels_build_for_the_other_instruction_set(tmp_path, monkeypatch):
    """A machine runs the kernels built for one of AVX-512 and AVX2 (the tests above); the
    other must compile here too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    other = "avx2" if kernels.instruction_set() == "avx512" else "avx512"
    library = kernels.build(other)
    assert library.name.endswith(f"-{other}.so") and library.stat().st_size > 0
    with pytest.raises(OSError, match="instruction set 'sse2'"):
        kernels.build("sse2")


@needs_kernels
def test_kernels_under_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 10)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((3, 2, 4, 4, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 20, 2, 3, 3)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 20)), jnp.float32)
    few = x[..., :2]
    dw, db = jax.vmap(lambda x, dy: fast.conv_weight_and_bias_grads(x, dy, (3, 3), (0, 0)))(x, dy)
    y = jax.vmap(lambda x, w, b: fast.conv(x, w, b))(few, w, b)
    for k in range(3):
        want_w, want_b = fast.conv_weight_and_bias_grads(
            x[k].astype(jnp.float64), dy[k].astype(jnp.float64), (3, 3), (0, 0))
        np.testing.assert_allclose(dw[k], want_w, rtol=0, atol=1e-5)
        np.testing.assert_allclose(db[k], want_b, rtol=0, atol=1e-5)
        np.testing.assert_allclose(y[k], _exact_conv(few[k], w[k], b[k], (0, 0)), rtol=0,
                                   atol=1e-5)


@needs_kernels
def test_kernels_are_deterministic_and_take_empty_batches():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((256, 12, 12, 20)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((256, 10, 10, 50)), jnp.float32)
    grads = jax.jit(lambda x, dy: fast.conv_weight_and_bias_grads(x, dy, (3, 3), (0, 0)))
    first = grads(x, dy)
    for _ in range(3):  # whichever thread sums which images, the same bits
        assert all(np.array_equal(a, b) for a, b in zip(first, grads(x, dy)))
    dw, db = grads(x[:0], dy[:0])
    assert not np.any(dw) and not np.any(db)
    w = jnp.ones((20, 2, 3, 3), jnp.float32)
    assert fast.conv(x[:0, :, :, :2], w).shape == (0, 10, 10, 20)
    # The fused layer's weight gradient, which reads x at each window's first maximum.
    first = jnp.asarray(rng.integers(0, 4, (256, 5, 5, 50)), jnp.int32)
    pooled = jax.jit(lambda x, first, dy: kernels.conv_pool_param_grads(
        x, first, dy, (3, 3), (2, 2), None))
    once = pooled(x, first, dy[:, :5, :5])
    for _ in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(once, pooled(x, first, dy[:, :5, :5])))
    dw, db = pooled(x[:0], first[:0], dy[:0, :5, :5])
    assert dw.shape == (50, 20, 3, 3) and not np.any(dw) and not np.any(db)


def test_float64_runs_the_xla_formulations():
    x = jnp.ones((1, 5, 5, 10), jnp.float64)
    dy = jnp.ones((1, 3, 3, 4), jnp.float64)
    text = jax.jit(lambda x, dy: fast.conv_weight_and_bias_grads(x, dy, (3, 3), (0, 0))).lower(
        x, dy).as_text()
    assert "jaxlenet_conv_param_grads" not in text
    w = jnp.ones((20, 2, 3, 3), jnp.float64)
    text = jax.jit(lambda x: fast.conv(x, w)).lower(x[..., :2]).as_text()
    assert "jaxlenet_conv_forward" not in text


def test_build_failure_names_the_compiler_and_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'no such header: ffi.h' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(OSError, match="broken-c\\+\\+.*no such header: ffi.h"):
        kernels.build()
    assert list((tmp_path / "jaxlenet" / "kernels").iterdir()) == []  # no partial library left


@needs_kernels
def test_build_is_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = kernels.build()
    assert first.parent == tmp_path / "jaxlenet" / "kernels" and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert kernels.build() == first and first.stat().st_mtime_ns == mtime


@needs_kernels
@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "no digest"])
def test_a_damaged_library_in_the_cache_is_rebuilt_not_loaded(tmp_path, monkeypatch, damage):
    """Loading a truncated shared library kills the process (SIGBUS); a foreign one would be
    called as ours. Each is found by the SHA-256 recorded at build time, and rebuilt."""
    built = kernels.build()  # in the user cache: copied below instead of compiled again
    compiler = tmp_path / "copying-c++"
    compiler.write_text(f'#!/bin/sh\neval out=\\${{$#}}\ncp "{built}" "$out"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = kernels.build()
    good = library.read_bytes()
    assert good == built.read_bytes()
    if damage == "truncated":
        library.write_bytes(good[: len(good) // 3])
    elif damage == "empty":
        library.write_bytes(b"")
    elif damage == "foreign":
        library.write_bytes(pathlib.Path(shutil.which("true")).read_bytes())
    else:
        library.with_name(library.name + ".sha256").unlink()
    damaged = library.read_bytes() if library.exists() else None
    assert kernels.build() == library
    rebuilt = library.read_bytes()
    assert rebuilt != damaged or damage == "no digest"
    digest = library.with_name(library.name + ".sha256").read_text()
    assert hashlib.sha256(rebuilt).hexdigest() == digest
    assert ctypes.CDLL(str(library)).cpu_kernels_supported()  # loads, whole
