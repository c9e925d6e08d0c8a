"""Channels-last 2-D convolutions in the forms XLA:CPU runs fastest, with gradients written by
hand where autodiff's are slow. Every function equals ``layers.conv(..., layout="NHWC")`` and is
tested against it (tests/test_fast.py); why each form was chosen, measured: docs/performance.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlenet import _checks
from jaxlenet.fast import kernels
from jaxlenet.layers import conv as reference_conv

# Convolutions with at most this many input channels (a network's first layer) take the
# few-channel forms where the kernels cannot run: the row matmul, plane-major weight-gradient
# patches.
FEW_CHANNELS = 8
# XLA:CPU gives YNNPACK, its fast convolution library, only convolutions with more than 16 input
# or output channels: fewer filters are zero-padded up to this many.
MIN_FAST_FILTERS = 17
_ROW_TILE = 4
# The row matmul's program grows with the image's width; wider images take the custom VJP.
_MAX_ROW_WIDTH = 64


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups: int = 1):
    """Equals ``layers.conv(x, weight, bias, ..., layout="NHWC")`` for channels-last 2-D data
    ``x`` (N, H, W, C) and ``weight`` (O, C/groups, kh, kw): returns (N, Ho, Wo, O).

    Stride-1 convolutions have a custom VJP (``_conv_nhwc``), whose passes run C++ kernels on the
    CPU; where those cannot run, the ones with few channels and filters on narrow images run as
    one matmul over pieces of image rows instead (``_conv_rows``). The rest run XLA's
    convolution in its fastest weight layout."""
    jax.eval_shape(functools.partial(reference_conv, stride=stride, padding=padding,
                                     dilation=dilation, groups=groups, layout="NHWC"),
                   x, weight, bias)  # the reference's checks, with their errors
    stride = _checks.as_tuple("stride", stride, 2, default=1)
    padding = _checks.as_tuple("pad", padding, 2, default=0)
    dilation = _checks.as_tuple("dilate", dilation, 2, default=1)
    out_channels, channels = weight.shape[0], x.shape[-1]
    if bias is None:
        bias = jnp.zeros((out_channels,), x.dtype)
    if groups != 1 or stride != (1, 1) or dilation != (1, 1):
        return _conv_xla(x, weight, bias, stride, padding, dilation, groups)
    if (channels <= FEW_CHANNELS and out_channels < MIN_FAST_FILTERS
            and x.shape[2] + 2 * padding[1] <= _MAX_ROW_WIDTH and not kernels.run_on(x, weight)):
        return _conv_rows(x, weight, bias, padding)
    return _conv_nhwc(x, weight, bias, padding)


def _conv_xla(x, weight, bias, stride, padding, dilation, groups):
    """XLA's convolution with the weight copied to (kh, kw, I, O) first: the physical layout
    XLA:CPU's fast convolution wants, which a loop-carried (O, I, kh, kw) parameter is not."""
    out_channels = weight.shape[0]
    weight = jnp.transpose(weight, (2, 3, 1, 0))
    padded = groups == 1 and out_channels < MIN_FAST_FILTERS
    if padded:
        weight = jnp.pad(weight, [(0, 0)] * 3 + [(0, MIN_FAST_FILTERS - out_channels)])
        if bias is not None:
            bias = jnp.pad(bias, (0, MIN_FAST_FILTERS - out_channels))
    y = lax.conv_general_dilated(
        x, weight, window_strides=stride, padding=[(p, p) for p in padding],
        rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups)
    # The bias before the zero filters are dropped: XLA:CPU then fuses the convolution and the
    # addition into one YNNPACK call.
    if bias is not None:
        y = y + bias.reshape(1, 1, 1, -1)
    return y[..., :out_channels]


def _conv_rows(x, weight, bias, padding):
    """A stride-1 convolution of ``x`` (N, H, W, C) as one matmul over pieces of image rows.

    The output's columns are taken ``tile`` at a time; the kh input rows under such a tile, each
    tile + kw - 1 columns wide, are one row of the left matrix (N*Ho*tiles, kh*(tile+kw-1)*C),
    and a banded (Toeplitz) matrix built from the weight places every kernel column at every
    output column of the tile. That is (tile+kw-1)/kw times the convolution's arithmetic, but for
    few channels and filters XLA:CPU runs this one matmul far faster than the narrow
    convolution, and autodiff of it makes the weight gradient a wide matmul too."""
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_nhwc(x, weight, bias, padding):
    """A stride-1 convolution whose gradients stay on XLA:CPU's fast paths: autodiff's are
    convolutions with batch and features swapped, which it runs several times slower."""
    def with_xla(x, weight, bias):
        return _conv_xla(x, weight, bias, (1, 1), padding, (1, 1), 1)

    return kernels.conv_forward(x, weight, bias, with_xla,
                                padding=(padding[0],) * 2 + (padding[1],) * 2)


def _conv_nhwc_fwd(x, weight, bias, padding):
    return _conv_nhwc(x, weight, bias, padding), (x, weight)


def _conv_nhwc_bwd(padding, residuals, dy):
    x, weight = residuals
    dx = input_grad(dy, weight, padding)
    dw, db = weight_and_bias_grads(x, dy, weight.shape[2:], padding)
    return dx.astype(x.dtype), dw.astype(weight.dtype), db


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def weight_and_bias_grads(x, dy, kernel, padding):
    """The gradients with respect to the weight (O, C, kh, kw) and the bias (O,) of a stride-1
    convolution of ``x`` (N, H, W, C) with a ``kernel`` (kh, kw) and ``padding``, given its
    output's cotangent ``dy`` (N, Ho, Wo, O): what autodiff of ``layers.conv`` gives.

    On the CPU in float32 a C++ kernel computes both without writing im2col patches out;
    elsewhere the weight gradient is one matmul of the patches with dy."""
    kh, kw = kernel
    n, ho, wo, out_channels = dy.shape
    channels = x.shape[-1]
    rows = n * ho * wo

    def from_patches(xp, dy):
        if channels <= FEW_CHANNELS:
            # Whole (C, N, H, W) planes stacked on a leading axis copy far faster than C-wide
            # rows interleaved.
            planes = jnp.moveaxis(xp, -1, 0)
            patches = jnp.stack([planes[:, :, i:i + ho, j:j + wo] for i in range(kh)
                                 for j in range(kw)])  # (kh*kw, C, N, Ho, Wo)
            dw = jnp.matmul(patches.reshape(kh * kw * channels, rows),
                            dy.reshape(rows, out_channels))
            dw = jnp.transpose(dw.reshape(kh, kw, channels, out_channels), (3, 2, 0, 1))
        else:
            patches = jnp.stack([xp[:, i:i + ho, j:j + wo, :] for i in range(kh)
                                 for j in range(kw)], axis=3)  # (N, Ho, Wo, kh*kw, C)
            dw = jnp.matmul(dy.reshape(rows, out_channels).T,
                            patches.reshape(rows, kh * kw * channels))
            dw = jnp.transpose(dw.reshape(out_channels, kh, kw, channels), (0, 3, 1, 2))
        return dw, jnp.sum(dy, axis=(0, 1, 2))

    xp = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    return kernels.conv_param_grads(xp, dy, kernel, from_patches)


def input_grad(dy, weight, padding):
    """The gradient with respect to the input (N, H, W, C) of a stride-1 convolution, given its
    output's cotangent ``dy`` (N, Ho, Wo, O) and ``weight`` (O, C, kh, kw): what autodiff of
    ``layers.conv`` gives.

    On the CPU in float32 by a C++ kernel; elsewhere by ``_input_grad_by_rows``, a convolution
    of dy, padded by kernel - 1 - padding, with the flipped kernel."""
    kh, kw = weight.shape[2:]
    n, ho, wo, _ = dy.shape
    input_shape = (n, ho + kh - 1 - 2 * padding[0], wo + kw - 1 - 2 * padding[1], weight.shape[1])
    fallback = lambda dy, weight: _input_grad_by_rows(dy, weight, padding)
    return kernels.conv_input_grad(dy, weight, fallback, input_shape=input_shape,
                                   padding=(padding[0],) * 2 + (padding[1],) * 2)


def _input_grad_by_rows(dy, weight, padding):
    """``input_grad`` in the form XLA:CPU runs fastest: the flipped-kernel convolution has the
    layer's few input channels as filters, which it runs slowly, so the kernel's columns are
    folded into the filters: one convolution over the rows alone with kw*C filters, then the kw
    column shifts summed."""
    out_channels, channels, kh, kw = weight.shape
    rows_only = jnp.transpose(weight[:, :, ::-1, :], (3, 1, 0, 2))  # (kw, C, O, kh), rows flipped
    rows_only = rows_only.reshape(kw * channels, out_channels, kh, 1)
    z = _conv_xla(dy, rows_only, None, (1, 1), (kh - 1 - padding[0], 0), (1, 1), 1)
    z = z.reshape(z.shape[:3] + (kw, channels))
    # Column j of the kernel moves dy's column w to the input's column w - padding + j.
    return sum(lax.pad(z[:, :, :, j, :], jnp.zeros((), z.dtype),
                       [(0, 0, 0), (0, 0, 0), (j - padding[1], kw - 1 - j - padding[1], 0),
                        (0, 0, 0)])
               for j in range(kw))
