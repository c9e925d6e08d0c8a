"""The functional core: pure ops over arrays, and layers as ``(init, apply)`` pairs of pure
functions.

Layouts follow MXNet: data (N, C, *spatial) unless ``layout`` says channels-last, convolution
weights (O, I/groups, *kernel), dense weights (out, in). Every op works under ``jit``, ``grad`` and
``vmap``; shape and argument checks run at trace time and raise ``ValueError``/``TypeError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlenet import _checks, cpu_kernels, initializers
from jaxlenet.pooling import first_maximum, pool

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

    if channels_last and nsp == 2 and groups == 1 and stride == (1, 1) and dilation == (1, 1):
        if bias is None:
            bias = jnp.zeros((out_channels,), x.dtype)
        if (channels <= _FEW_CHANNELS and out_channels < _MIN_FAST_FILTERS
                and sizes[1] + 2 * padding[1] <= _MAX_ROW_WIDTH):
            return _conv2d_rows(x, weight, bias, padding)
        return _conv2d_nhwc(x, weight, bias, padding)
    return _conv_general(x, weight, stride, padding, dilation, groups, channels_last, bias)


def _conv_general(x, weight, stride, padding, dilation, groups, channels_last, bias=None):
    nsp = jnp.ndim(x) - 2
    spatial = "DHW"[-nsp:]
    out_channels = weight.shape[0]
    if channels_last:
        # An explicit (*kernel, I, O) copy: XLA:CPU's fast convolution wants that physical
        # layout, and inside a loop it would otherwise run on the (I, O)-major parameter as is,
        # through a generic emitter several times slower.
        weight = jnp.transpose(weight, tuple(range(2, nsp + 2)) + (1, 0))
        specs = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        if groups == 1 and out_channels < _MIN_FAST_FILTERS:
            # XLA:CPU hands YNNPACK, its fast convolution library, only convolutions with more
            # than 16 input or output channels; zero filters up to 17 and dropping their outputs
            # is faster than the path the rest take (1 channel -> 16 filters: 5.2 ms, -> 17: 1.5).
            weight = jnp.pad(weight, [(0, 0)] * (nsp + 1) + [(0, _MIN_FAST_FILTERS - out_channels)])
            if bias is not None:
                bias = jnp.pad(bias, (0, _MIN_FAST_FILTERS - out_channels))
    else:
        specs = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
    y = lax.conv_general_dilated(
        x, weight, window_strides=stride, padding=[(p, p) for p in padding],
        rhs_dilation=dilation, dimension_numbers=specs, feature_group_count=groups)
    if not channels_last:
        return y if bias is None else y + bias.reshape((1, -1) + (1,) * nsp)
    # The bias is added before the zero filters are dropped: XLA:CPU then fuses convolution and
    # addition into one YNNPACK call, ~2.5x faster than the convolution alone (6 -> 16 filters).
    if bias is not None:
        y = y + bias.reshape((1,) * (nsp + 1) + (-1,))
    return y[..., :out_channels]


_MIN_FAST_FILTERS = 17


def _conv2d_rows(x, weight, bias, padding):
    """A stride-1 convolution of ``x`` (N, H, W, C) as one matmul over pieces of image rows.

    The output's columns are taken ``tile`` at a time; the kh input rows under such a tile, each
    tile + kw - 1 columns wide, are one row of the left matrix (N*Ho*tiles, kh*(tile+kw-1)*C),
    and a banded (Toeplitz) matrix built from the weight places every kernel column at every
    output column of the tile. That is (tile+kw-1)/kw times the arithmetic of the convolution
    (1.6x for 5x5 kernels), but for few channels and filters (LeNet-5's 1 -> 6 and 6 -> 16)
    XLA:CPU runs this one matmul far faster than the narrow convolution, and autodiff of it (no
    custom VJP) makes the weight gradient, otherwise an im2col matmul with at most 16 columns, a
    wide matmul too."""
    out_channels, channels, kh, kw = weight.shape
    tile = min(_ROW_TILE, kw)
    ho = x.shape[1] + 2 * padding[0] - kh + 1
    wo = x.shape[2] + 2 * padding[1] - kw + 1
    tiles = -(-wo // tile)
    span = tile + kw - 1
    # Zero columns on the right make the last tile whole; its extra outputs are dropped.
    extra = tiles * tile - wo
    x = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1], padding[1] + extra), (0, 0)))
    n = x.shape[0]
    pieces = jnp.stack([x[:, i:i + ho, t * tile:t * tile + span] for t in range(tiles)
                        for i in range(kh)], axis=2)  # (N, Ho, tiles*kh, span, C)
    # band[v, w, j] = 1 where column v of a tile's span is output column w's kernel column j.
    band = np.equal.outer(np.arange(span)[:, None] - np.arange(tile)[None, :], np.arange(kw))
    toeplitz = jnp.einsum("vwj,ocij->ivcwo", jnp.asarray(band, x.dtype), weight)
    y = jnp.matmul(pieces.reshape(n * ho * tiles, kh * span * channels),
                   toeplitz.reshape(kh * span * channels, tile * out_channels))
    y = y.reshape(n, ho, tiles * tile, out_channels)[:, :, :wo]
    return y + bias.reshape(1, 1, 1, out_channels)


_ROW_TILE = 4
# The left matrix is assembled from (width / tile) * kh slices, a program that grows with the
# image's width (strided slices instead, a fixed number, ran LeNet-5's step 1.6x slower); wider
# images take the custom-VJP path.
_MAX_ROW_WIDTH = 64


# XLA:CPU differentiates a convolution into convolutions with swapped batch/feature dimensions
# that it runs 5-10x slower than a forward convolution, and slower still inside a loop (lax.scan).
# For the stride-1 2-D case, both gradients are written here in forms that stay on its fast
# paths: the input gradient as a forward convolution over the kernel's rows, the weight gradient
# as one matmul over im2col patches. Checked against autodiff of a plain lax convolution in
# tests/test_layers.py.

@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv2d_nhwc(x, weight, bias, padding):
    def with_xla(x, weight, bias):
        return _conv_general(x, weight, (1, 1), padding, (1, 1), 1, True, bias)

    if x.shape[-1] > _FEW_CHANNELS:
        return with_xla(x, weight, bias)
    # Few channels: on the CPU, a kernel of our own at twice the speed of XLA's convolution
    # (LeNet's first layer as 2x2 blocks, 256 images: 2.7 -> 1.2 ms).
    xp = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    return cpu_kernels.conv_forward(xp, weight, bias,
                                    lambda xp, weight, bias: with_xla(x, weight, bias))


def _conv2d_nhwc_fwd(x, weight, bias, padding):
    return _conv2d_nhwc(x, weight, bias, padding), (x, weight)


def _conv2d_nhwc_bwd(padding, residuals, dy):
    x, weight = residuals
    dx = _conv2d_nhwc_input_grad(dy, weight, padding)
    dw, db = _conv2d_nhwc_param_grads(x, dy, weight.shape[2:], padding)
    return dx.astype(x.dtype), dw.astype(weight.dtype), db


def _conv2d_nhwc_param_grads(x, dy, kernel, padding):
    """The gradients with respect to the weight (O, C, kh, kw) and the bias (O,) of a stride-1
    convolution of ``x`` (N, H, W, C), given its output's cotangent ``dy`` (N, Ho, Wo, O).

    On the CPU a kernel of our own computes both without writing im2col patches out (LeNet's
    training step 24.3-28.0 -> 19.0-22.3 ms, for its second convolution). Elsewhere the weight
    gradient is one matmul of the patches with dy."""
    kh, kw = kernel
    n, ho, wo, out_channels = dy.shape
    channels = x.shape[-1]
    rows = n * ho * wo

    def from_patches(xp, dy):
        if channels <= _FEW_CHANNELS:
            # Few channels (a network's first layer): shifted copies of whole (C, N, H, W) planes
            # stacked on a leading axis copy far faster than C-wide rows interleaved.
            planes = jnp.moveaxis(xp, -1, 0)
            patches = jnp.stack([planes[:, :, i:i + ho, j:j + wo] for i in range(kh)
                                 for j in range(kw)])  # (kh*kw, C, N, Ho, Wo)
            dw = jnp.matmul(patches.reshape(kh * kw * channels, rows),
                            dy.reshape(rows, out_channels))
            dw = jnp.transpose(dw.reshape(kh, kw, channels, out_channels), (3, 2, 0, 1))
        else:
            patches = jnp.stack([xp[:, i:i + ho, j:j + wo, :] for i in range(kh)
                                 for j in range(kw)], axis=3)  # (N, Ho, Wo, kh*kw, C)
            # dy^T @ patches rather than patches^T @ dy: the same Eigen matmul with the
            # (O, kh*kw*C) result, ~5% faster in LeNet's training step (26.9-28.3 -> 25.8-26.7).
            dw = jnp.matmul(dy.reshape(rows, out_channels).T,
                            patches.reshape(rows, kh * kw * channels))
            dw = jnp.transpose(dw.reshape(out_channels, kh, kw, channels), (0, 3, 1, 2))
        return dw, jnp.sum(dy, axis=(0, 1, 2))

    xp = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    return cpu_kernels.conv_param_grads(xp, dy, kernel, from_patches)


_FEW_CHANNELS = 8


def _conv2d_nhwc_input_grad(dy, weight, padding):
    """The gradient with respect to the input (N, H, W, C) of a stride-1 convolution, given its
    output's cotangent ``dy`` (N, Ho, Wo, O) and ``weight`` (O, C, kh, kw).

    It is a convolution of dy with the kernel flipped, whose filters are the C input channels:
    few (LeNet's second convolution: 20), which XLA:CPU runs at a third of the speed of the forward
    convolution. So the kernel's columns are folded into the filters instead: one convolution over
    the rows alone with kw*C filters, then the kw column shifts summed."""
    out_channels, channels, kh, kw = weight.shape
    rows_only = jnp.transpose(weight[:, :, ::-1, :], (3, 1, 0, 2))  # (kw, C, O, kh), rows flipped
    rows_only = rows_only.reshape(kw * channels, out_channels, kh, 1)
    z = _conv_general(dy, rows_only, (1, 1), (kh - 1 - padding[0], 0), (1, 1), 1, True)
    z = z.reshape(z.shape[:3] + (kw, channels))
    # Column j of the kernel moves dy's column w to the input's column w - padding + j.
    return sum(lax.pad(z[:, :, :, j, :], jnp.zeros((), z.dtype),
                       [(0, 0, 0), (0, 0, 0), (j - padding[1], kw - 1 - j - padding[1], 0),
                        (0, 0, 0)])
               for j in range(kw))


_conv2d_nhwc.defvjp(_conv2d_nhwc_fwd, _conv2d_nhwc_bwd)


def _conv_pool(x, weight, bias, window, padding, activation):
    """``pool(activation(conv(x, weight, bias, padding)), window)`` with a max pool of
    non-overlapping windows (stride = window, no padding, 'valid'), for channels-last 2-D data
    ``x`` (N, H, W, C), a stride-1 convolution and ``bias`` (O,) or None: returns
    (N, Ho // ph, Wo // pw, O).

    It runs as one convolution over space-to-depth blocks: x cut into (ph, pw) blocks of
    ph*pw*C channels, and a weight that computes all ph*pw positions of a pooling window as
    filters of their own, (ph*pw*O) of them, over a kernel of blocks. The max then runs over a
    contiguous axis. For a one-channel image (LeNet's 1 -> 20 5x5 and 2x2 pool: 4 channels ->
    80 filters, 3x3) that is 1.44x the arithmetic, but in shapes XLA:CPU runs faster: LeNet's
    first layer and pool, forward and weight gradient, 11-14 -> 6.5-7 ms for 256 images, and its
    training step 27-28 -> 25-25.6 ms."""
    n = x.shape[0]
    out_channels, channels, kh, kw = weight.shape
    ph, pw = window
    x = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    hp, wp = (x.shape[1] - kh + 1) // ph, (x.shape[2] - kw + 1) // pw
    place, (bh, bw) = _space_to_depth_kernel(kh, kw, ph, pw)
    # The blocks under the kept windows; a last partial block is zero-padded (its rows meet only
    # zero weights).
    rows, cols = ph * (hp + bh - 1), pw * (wp + bw - 1)
    x = x[:, :rows, :cols]
    x = jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]), (0, 0)))
    blocks = x.reshape(n, rows // ph, ph, cols // pw, pw, channels).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, rows // ph, cols // pw, ph * pw * channels)
    block_weight = jnp.einsum("uvabcdpq,ozuv->pqocdzab", jnp.asarray(place, weight.dtype), weight)
    block_weight = block_weight.reshape(ph * pw * out_channels, ph * pw * channels, bh, bw)
    block_bias = (jnp.zeros((out_channels,), weight.dtype) if bias is None else bias)
    block_bias = jnp.tile(block_bias, ph * pw)
    # Channels ordered (row in window, column in window, filter): the window's positions in
    # row-major order, so the first maximum is MXNet's. The batch axis stays an axis of its own,
    # so that a batch split over devices stays split.
    if activation == "relu":
        return _conv_max_relu(blocks, block_weight, block_bias, ph * pw)
    y = conv(blocks, block_weight, block_bias, layout="NHWC").reshape(n, hp, wp, ph * pw,
                                                                      out_channels)
    # MXNet pools the activation's output. Where the activation can tie distinct inputs
    # (sigmoid saturates), that decides which position takes the gradient: it runs first.
    y = _positions_max(ACTIVATIONS[activation](y) if activation else y)
    return y.reshape(n, hp, wp, out_channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_max_relu(blocks, weight, bias, positions):
    """relu(max over the positions of conv(blocks, weight, bias)), for ``_conv_pool``: the
    convolution's (positions * O) filters are (position, filter) pairs; (N, Ho, Wo, O).

    Differentiated, only the first position holding each maximum and whether it is positive are
    kept, and the weight's gradient comes from them (``cpu_kernels.conv_pool_param_grads``):
    on the CPU the convolution's cotangent, zero at 3 of every 4 positions for 2x2 windows, is
    never written out whole."""
    y = conv(blocks, weight, bias, layout="NHWC")
    # Undifferentiated (evaluation, prediction), the ReLU runs before the max: without kernels
    # it keeps XLA from fusing the max into the convolution's YNNPACK call, which runs that
    # fusion ~2.4x slower (lenet inference 410 -> 280 ms per 10,000 images). The same values:
    # ReLU commutes with the max.
    return _positions_max(relu(y.reshape(y.shape[:3] + (positions, -1)))).reshape(
        y.shape[:3] + (-1,))


def _conv_max_relu_fwd(blocks, weight, bias, positions):
    y = conv(blocks, weight, bias, layout="NHWC")
    y = y.reshape(y.shape[:3] + (positions, -1))
    top = jnp.max(y, axis=3, keepdims=True)
    _, first = first_maximum(y, top, (3,))
    top, first = top[:, :, :, 0], first[:, :, :, 0]
    # The ReLU after the max, on the 4x smaller maximum: a window whose max is <= 0 passes no
    # gradient (relu'(0) = 0).
    return relu(top), (blocks, weight, first, top > 0)


def _conv_max_relu_bwd(positions, residuals, cotangent):
    blocks, weight, first, positive = residuals
    dmax = jnp.where(positive, cotangent, jnp.zeros((), cotangent.dtype))

    def conv_cotangent(first, dmax):
        position = jnp.arange(positions, dtype=jnp.int32).reshape(1, 1, 1, positions, 1)
        dy = jnp.where(position == first[:, :, :, None], dmax[:, :, :, None],
                       jnp.zeros((), dmax.dtype))
        return dy.reshape(dy.shape[:3] + (-1,))

    kernel = weight.shape[2:]
    dw, db = cpu_kernels.conv_pool_param_grads(
        blocks, first, dmax, weight.shape,
        lambda blocks, first, dmax: _conv2d_nhwc_param_grads(
            blocks, conv_cotangent(first, dmax), kernel, (0, 0)))
    # Unused when the blocks are the network's input (LeNet's images): XLA drops it then.
    dblocks = _conv2d_nhwc_input_grad(conv_cotangent(first, dmax), weight, (0, 0))
    return dblocks.astype(blocks.dtype), dw.astype(weight.dtype), db.astype(weight.dtype)


_conv_max_relu.defvjp(_conv_max_relu_fwd, _conv_max_relu_bwd)


def _positions_max(y):
    """Max over axis 3 of (N, H, W, positions, C), the first maximum taking the gradient."""
    return pool(y, (1, 1, y.shape[3]), layout="NDHWC")


@functools.cache
def _space_to_depth_kernel(kh, kw, ph, pw):
    """``place[u, v, bi, bj, di, dj, pi, pj] = 1`` where kernel tap (u, v) of the output at
    position (pi, pj) of its pooling window reads row di, column dj of the input block (bi, bj)
    blocks down and right; and the kernel's size in blocks."""
    bh, bw = (ph + kh - 2) // ph + 1, (pw + kw - 2) // pw + 1
    place = np.zeros((kh, kw, bh, bw, ph, pw, ph, pw), np.float32)
    for u, v, pi, pj in np.ndindex(kh, kw, ph, pw):
        bi, di = divmod(pi + u, ph)
        bj, dj = divmod(pj + v, pw)
        place[u, v, bi, bj, di, dj, pi, pj] = 1
    return place, (bh, bw)


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
    """A layer: ``init(key, in_shape) -> (out_shape, params)`` and ``apply(params, x) -> y``.

    Shapes include the batch axis; params are a dict of arrays (empty for parameter-free layers).
    ``spec`` names the op and its arguments (``('conv', {...})``, ``('pool', {...})``), for
    ``serial``'s fusion of a convolution with the max pool after it."""
    init: Callable
    apply: Callable
    spec: tuple | None = None


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

    spec = ("conv", dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                         activation=activation, layout=layout))
    return Layer(init, apply, spec)


def Dense(out_units: int, *, activation: str | None = None, use_bias: bool = True,
          weight_init=initializers.uniform(0.07), bias_init=initializers.zeros) -> Layer:
    """Fully connected layer on flattened input (Gluon's ``Dense``), optionally followed by
    ``activation``; params ``{'weight': (out, in), 'bias': (out,)}``."""
    _check_activation(activation)
    def init(key, in_shape):
        in_units = 1
        for n in in_shape[1:]:
            in_units *= n
        weight_key, bias_key = jax.random.split(key)
        params = {"weight": weight_init(weight_key, (out_units, in_units))}
        if use_bias:
            params["bias"] = bias_init(bias_key, (out_units,))
        return (in_shape[0], out_units), params

    def apply(params, x):
        y = dense(x, params["weight"], params.get("bias"))
        return ACTIVATIONS[activation](y) if activation else y

    return Layer(init, apply)


def _stateless(fn: Callable, spec: tuple | None = None) -> Layer:
    def init(key, in_shape):
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(in_shape, jnp.float32))
        return out.shape, {}

    return Layer(init, lambda params, x: fn(x), spec)


def Pool(window, *, kind: str = "max", stride=None, padding=0, layout: str | None = None,
         **options) -> Layer:
    """Pooling layer (see ``pool``); ``stride`` defaults to ``window``, as in Gluon."""
    spec = ("pool", dict(window=window, kind=kind, stride=stride, padding=padding, layout=layout,
                         **options))
    return _stateless(lambda x: pool(x, window, kind=kind, stride=stride, padding=padding,
                                     layout=layout, **options), spec)


def _check_activation(kind: str | None) -> None:
    if kind is not None and kind not in ACTIVATIONS:
        raise ValueError(f"activation {kind!r} is not one of {tuple(ACTIVATIONS)}")


def Activation(kind: str) -> Layer:
    _check_activation(kind)
    return _stateless(ACTIVATIONS[kind])


def Flatten(*, layout: str | None = None) -> Layer:
    """Flattens to (N, features) in channels-first order, also from channels-last data
    (``layout='NHWC'``), so dense weights are the same whatever layout the network runs in."""
    def fn(x):
        _, channels_last = _checks.spatial_layout(layout, x.ndim)
        if channels_last:
            x = jnp.moveaxis(x, -1, 1)
        return flatten(x)
    return _stateless(fn)


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
        i = 0
        while i < len(named_layers):
            name, layer = named_layers[i]
            layer_params = params.get(name, {})
            fused = (_fusible_pool(layer, named_layers[i + 1][1], x, layer_params)
                     if i + 1 < len(named_layers) else None)
            if fused is None:
                x = layer.apply(layer_params, x)
                i += 1
                continue
            window, padding = fused
            x = _conv_pool(x, layer_params["weight"], layer_params.get("bias"), window, padding,
                           layer.spec[1]["activation"])
            i += 2
        return x

    return Layer(init, apply)


def _fusible_pool(layer, following, x, params):
    """(pool window, convolution padding) where ``following`` is a max pool that ``_conv_pool``
    can run fused with the convolution ``layer`` on ``x``, else None: channels-last 2-D, a
    stride-1 ungrouped convolution, non-overlapping unpadded 'valid' windows, and few channels
    after space-to-depth (the blocks' extra arithmetic must cost less than it saves: LeNet's
    20-channel second convolution runs slower fused). Anything else, arguments the layers would
    refuse included, runs unfused, and the layers raise their own errors."""
    if (layer.spec is None or following.spec is None or layer.spec[0] != "conv"
            or following.spec[0] != "pool" or jnp.ndim(x) != 4):
        return None
    (_, conv_args), (_, pool_args) = layer.spec, following.spec
    weight = params.get("weight")
    try:
        window = _checks.positive("kernel", _checks.as_tuple("kernel", pool_args["window"], 2,
                                                             default=1))
        padding = _checks.as_tuple("pad", conv_args["padding"], 2, default=0)
        fusible = (
            _checks.spatial_layout(conv_args["layout"], 4)[1]
            and _checks.spatial_layout(pool_args["layout"], 4)[1]
            and _checks.as_tuple("stride", conv_args["stride"], 2, default=1) == (1, 1)
            and _checks.as_tuple("dilate", conv_args["dilation"], 2, default=1) == (1, 1)
            and conv_args["groups"] == 1
            and pool_args["kind"] == "max"
            and (pool_args["stride"] is None
                 or _checks.as_tuple("stride", pool_args["stride"], 2, default=1) == window)
            and _checks.as_tuple("pad", pool_args["padding"], 2, default=0) == (0, 0)
            and pool_args.get("convention", "valid") == "valid"
            and set(pool_args) <= {"window", "kind", "stride", "padding", "layout", "convention"}
            and jnp.ndim(weight) == 4 and weight.shape[1] == x.shape[-1]
            and jnp.shape(params.get("bias", weight[:, 0, 0, 0])) == weight.shape[:1]
            and jnp.result_type(x) == jnp.result_type(weight)
            and jnp.issubdtype(jnp.result_type(x), jnp.floating)
            and window[0] * window[1] * x.shape[-1] <= _FEW_CHANNELS
            and all(n + 2 * p - k + 1 >= w for n, p, k, w
                    in zip(x.shape[1:3], padding, weight.shape[2:], window)))
    except (TypeError, ValueError):
        return None
    return (window, padding) if fusible else None
