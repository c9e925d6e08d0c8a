"""A convolution, its activation and the max pool after it as one convolution over space-to-depth
blocks, for the few-channel first layer of a network."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet import _checks
from jaxlenet.fast import kernels
from jaxlenet.fast.conv2d import FEW_CHANNELS, conv, input_grad, weight_and_bias_grads
from jaxlenet.fast.pool import first_maximum, max_pool
from jaxlenet.layers import ACTIVATIONS, relu


def conv_max_pool(x, weight, bias=None, *, padding=0, window=2, activation: str | None = None):
    """Equals ``layers.pool(act(layers.conv(x, weight, bias, padding=padding, layout="NHWC")),
    window, layout="NHWC")`` with ``act`` the activation named ``activation`` (or none): a
    stride-1 convolution of channels-last 2-D data ``x`` (N, H, W, C) and a max pool of
    non-overlapping windows (stride = window, no padding, 'valid'). Values and gradients are the
    two layers', the first maximum of a window taking its gradient.

    Where the blocks have few channels (``window`` area x C <= ``FEW_CHANNELS``), it runs as one
    convolution over blocks: x cut into windows of ph*pw*C channels, and a weight that computes
    all ph*pw positions of a window as filters of their own, over a kernel of blocks; the max then
    runs over a contiguous axis. That is more arithmetic than the convolution (1.44x for LeNet's
    5x5 kernel and 2x2 windows) in shapes XLA:CPU runs much faster. Elsewhere the layers run one
    after the other; with a ReLU or a sigmoid, the weight's gradient then reads x only at each
    window's first maximum (``_conv_act_pool``)."""
    def one_by_one(x, weight, bias):
        y = conv(x, weight, bias, padding=padding)
        return max_pool(ACTIVATIONS[activation](y) if activation else y, window, layout="NHWC")

    out = jax.eval_shape(one_by_one, x, weight, bias)  # the layers' checks, with their errors
    window = _checks.as_tuple("kernel", window, 2, default=1)
    padding = _checks.as_tuple("pad", padding, 2, default=0)
    few_channels = window[0] * window[1] * x.shape[-1] <= FEW_CHANNELS
    if not few_channels and activation not in _CHAIN_RULE_FROM_OUTPUT:
        return one_by_one(x, weight, bias)

    x = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
    bias = jnp.zeros((weight.shape[0],), weight.dtype) if bias is None else bias
    if not few_channels:
        return _conv_act_pool(x, weight, bias, window, activation)
    if activation in _CHAIN_RULE_FROM_OUTPUT:
        return _conv_act_max(x, weight, bias, window, activation)
    y = conv(*_as_blocks(x, weight, bias, window))
    y = y.reshape(out.shape[:3] + (window[0] * window[1], weight.shape[0]))
    return _positions_max(ACTIVATIONS[activation](y) if activation else y).reshape(out.shape)


def _as_blocks(x, weight, bias, window):
    """(blocks, block weight, block bias): the convolution of ``x`` (N, H, W, C), padded
    already, and the positions of its pool's windows as one convolution over blocks, whose
    filters are (row in window, column in window, filter): the window's positions in row-major
    order, so that the first maximum is MXNet's."""
    return (_blocks(x, weight.shape[2:], window), _block_weight(weight, window),
            jnp.tile(bias, window[0] * window[1]))


def _blocks(x, kernel, window):
    """``x`` (N, H, W, C) cut into windows of ph*pw*C channels: (N, Hb, Wb, ph*pw*C), the
    blocks under the kept windows of a convolution with ``kernel``, a last partial block
    zero-padded (its rows meet only zero weights). The batch axis stays an axis of its own, so
    that a batch split over devices stays split."""
    n, h, w, channels = x.shape
    (kh, kw), (ph, pw) = kernel, window
    _, (bh, bw) = _space_to_depth_kernel(kh, kw, ph, pw)
    rows = ph * ((h - kh + 1) // ph + bh - 1)
    cols = pw * ((w - kw + 1) // pw + bw - 1)
    x = x[:, :rows, :cols]
    x = jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]), (0, 0)))
    blocks = x.reshape(n, rows // ph, ph, cols // pw, pw, channels).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, rows // ph, cols // pw, ph * pw * channels)


def _block_weight(weight, window):
    """``weight`` (O, C, kh, kw) as the block convolution's (ph*pw*O, ph*pw*C, bh, bw)."""
    out_channels, channels, kh, kw = weight.shape
    ph, pw = window
    place, (bh, bw) = _space_to_depth_kernel(kh, kw, ph, pw)
    block_weight = jnp.einsum("uvabcdpq,ozuv->pqocdzab", jnp.asarray(place, weight.dtype), weight)
    return block_weight.reshape(ph * pw * out_channels, ph * pw * channels, bh, bw)


# The activations whose derivative is a function of their output, as the chain rule through
# each: (output, cotangent) -> the input's cotangent, in the reference's order of operations.
# The fused layer's backward pass needs only the pooled output then.
_CHAIN_RULE_FROM_OUTPUT = {
    "relu": lambda out, ct: jnp.where(out > 0, ct, jnp.zeros((), ct.dtype)),  # relu'(0) = 0
    "sigmoid": lambda out, ct: ct * (out * (1 - out)),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_act_max(x, weight, bias, window, activation):
    """max over the windows of act(conv(x, weight, bias)), act the activation named
    ``activation``, for ``x`` (N, H, W, C) padded already: (N, Hp, Wp, O), computed over blocks
    (``_as_blocks``).

    Differentiated, only the first position holding each maximum and the pooled output are
    kept, and the weight's gradient comes from them (``kernels.conv_pool_param_grads``): on the
    CPU the convolution's cotangent, zero at all but one position of a window, is never written
    out, and x is read at that position alone."""
    if activation == "relu":
        blocks, block_weight, block_bias = _as_blocks(x, weight, bias, window)
        return _conv_positions_max(blocks, block_weight, block_bias, window[0] * window[1],
                                   relu_first=True, relu_after=True)[0]
    return _conv_act_max_fwd(x, weight, bias, window, activation)[0]


def _conv_act_max_fwd(x, weight, bias, window, activation):
    blocks, block_weight, block_bias = _as_blocks(x, weight, bias, window)
    positions = window[0] * window[1]
    if activation == "relu":
        # ReLU commutes with max, and where it ties distinct inputs (at 0) its derivative is 0:
        # the max and the first maximum of the convolution's output serve. The ReLU's output
        # tells its derivative as well as its input does (out > 0 exactly where top > 0).
        out, first = _conv_positions_max(blocks, block_weight, block_bias, positions,
                                         relu_after=True)
    else:
        # MXNet pools the activation's output; where the activation ties distinct inputs
        # (sigmoid saturates), that decides which position takes the gradient.
        y = conv(blocks, block_weight, block_bias)
        y = ACTIVATIONS[activation](y.reshape(y.shape[:3] + (positions, -1)))
        top = jnp.max(y, axis=3, keepdims=True)
        _, first = first_maximum(y, top, (3,))
        out, first = top[:, :, :, 0], first[:, :, :, 0]
    return out, (x, weight, first, out)


def _conv_act_max_bwd(window, activation, residuals, cotangent):
    x, weight, first, out = residuals
    dmax = _CHAIN_RULE_FROM_OUTPUT[activation](out, cotangent)
    kernel = weight.shape[2:]
    positions = window[0] * window[1]

    def conv_cotangent(first, dmax):
        position = jnp.arange(positions, dtype=jnp.int32).reshape(1, 1, 1, positions, 1)
        dy = jnp.where(position == first[:, :, :, None], dmax[:, :, :, None],
                       jnp.zeros((), dmax.dtype))
        return dy.reshape(dy.shape[:3] + (-1,))

    def over_blocks(x, first, dmax):
        block_dw, block_db = weight_and_bias_grads(
            _blocks(x, kernel, window), conv_cotangent(first, dmax),
            _space_to_depth_kernel(*kernel, *window)[1], (0, 0))
        dw, = jax.linear_transpose(lambda w: _block_weight(w, window), weight)(block_dw)
        return dw, block_db.reshape(positions, -1).sum(axis=0)

    dw, db = kernels.conv_pool_param_grads(x, first, dmax, kernel, window, over_blocks)
    # Unused when x is the network's input (LeNet's images): XLA drops it then.
    dblocks = input_grad(conv_cotangent(first, dmax), _block_weight(weight, window), (0, 0))
    dx, = jax.linear_transpose(lambda x: _blocks(x, kernel, window), x)(dblocks)
    return dx.astype(x.dtype), dw.astype(weight.dtype), db.astype(weight.dtype)


_conv_act_max.defvjp(_conv_act_max_fwd, _conv_act_max_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_act_pool(x, weight, bias, window, activation):
    """The max pool over ``window`` of act(conv(x, weight, bias)), act the activation named
    ``activation``, for ``x`` (N, H, W, C) padded already: the two layers one after the other.

    Differentiated, the pool keeps the first position holding each maximum, and the weight's
    gradient comes from it and the pooled output (``kernels.conv_pool_param_grads``): on the
    CPU, x is read at that position alone."""
    if activation == "relu":
        return _conv_pool_max(x, weight, bias, window, relu_after=True)[0]
    return max_pool(ACTIVATIONS[activation](conv(x, weight, bias)), window, layout="NHWC")


def _conv_act_pool_fwd(x, weight, bias, window, activation):
    # ReLU commutes with max (see _conv_act_max_fwd): it runs after the pool, in its kernel.
    relu_after = activation == "relu"
    out, first = _conv_pool_max(x, weight, bias, window, relu_after=relu_after,
                                activation=None if relu_after else activation)
    return out, (x, weight, first, out)


def _conv_act_pool_bwd(window, activation, residuals, cotangent):
    x, weight, first, out = residuals
    dmax = _CHAIN_RULE_FROM_OUTPUT[activation](out, cotangent)
    kernel = weight.shape[2:]
    (ph, pw), (n, hp, wp, out_channels) = window, dmax.shape

    def conv_cotangent(first, dmax):
        position = jnp.arange(ph * pw, dtype=jnp.int32).reshape(1, 1, ph, 1, pw, 1)
        dy = jnp.where(position == first[:, :, None, :, None], dmax[:, :, None, :, None],
                       jnp.zeros((), dmax.dtype)).reshape(n, hp * ph, wp * pw, out_channels)
        # Rows and columns that fill no window take no gradient.
        return jnp.pad(dy, ((0, 0), (0, x.shape[1] - kernel[0] + 1 - hp * ph),
                            (0, x.shape[2] - kernel[1] + 1 - wp * pw), (0, 0)))

    dw, db = kernels.conv_pool_param_grads(
        x, first, dmax, kernel, window,
        lambda x, first, dmax: weight_and_bias_grads(x, conv_cotangent(first, dmax), kernel,
                                                     (0, 0)))
    dx = kernels.conv_pool_input_grad(
        first, dmax, weight, window,
        lambda first, dmax, weight: input_grad(conv_cotangent(first, dmax), weight, (0, 0)),
        input_shape=x.shape)
    return dx.astype(x.dtype), dw.astype(weight.dtype), db.astype(weight.dtype)


_conv_act_pool.defvjp(_conv_act_pool_fwd, _conv_act_pool_bwd)


def _conv_positions_max(blocks, weight, bias, positions, *, relu_first=False,
                        relu_after=False):
    """(the max over the positions of conv(blocks, weight, bias), with ``relu_after`` its ReLU, and
    the first position holding the max), each (N, Ho, Wo, O): on the CPU by one C++ kernel
    that never writes the convolution's output out whole (``kernels.conv_max_forward``).
    Elsewhere, with ``relu_first``, the ReLU runs before the max (the same values after a ReLU
    of the max, and a different first position, for callers that need none): it keeps XLA from
    fusing the max into the convolution's YNNPACK call, which runs slower."""
    def by_xla(blocks, weight, bias):
        y = conv(blocks, weight, bias)
        y = y.reshape(y.shape[:3] + (positions, -1))
        if relu_first:
            y = relu(y)
        top = jnp.max(y, axis=3, keepdims=True)
        _, first = first_maximum(y, top, (3,))
        top = top[:, :, :, 0]
        return relu(top) if relu_after else top, first[:, :, :, 0]

    return kernels.conv_max_forward(blocks, weight, bias, positions, by_xla, relu=relu_after)


def _conv_pool_max(x, weight, bias, window, *, activation=None, relu_after=False):
    """(the max pool over ``window`` of act(conv(x, weight, bias)), with ``relu_after`` its
    ReLU, and the first position p = pi * pw + pj of each window holding the max), each (N, Hp,
    Wp, O), for ``x`` (N, H, W, C) padded already: without an activation, on the CPU by one C++
    kernel that never writes the convolution's output out (``kernels.conv_pool_forward``)."""
    def by_xla(x, weight, bias):
        y = conv(x, weight, bias)
        if activation is not None:
            y = ACTIVATIONS[activation](y)
        (ph, pw), (n, ho, wo, out_channels) = window, y.shape
        windows = y[:, :ho // ph * ph, :wo // pw * pw].reshape(n, ho // ph, ph, wo // pw, pw,
                                                                out_channels)
        top = jnp.max(windows, axis=(2, 4), keepdims=True)
        _, first = first_maximum(windows, top, (2, 4))
        top = top[:, :, 0, :, 0]
        return relu(top) if relu_after else top, first[:, :, 0, :, 0]

    if activation is not None:
        return by_xla(x, weight, bias)
    return kernels.conv_pool_forward(x, weight, bias, window, by_xla, relu=relu_after)


def _positions_max(y):
    """Max over axis 3 of (N, H, W, positions, C), the first maximum taking the gradient."""
    return max_pool(y, (1, 1, y.shape[3]), layout="NDHWC")


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
