"""Softmax cross-entropy, as Gluon's ``SoftmaxCrossEntropyLoss`` computes it before averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_cross_entropy(pred, label, *, axis: int = -1, sparse_label: bool = True,
                          from_logits: bool = False):
    """Cross-entropy per position: pred's shape without ``axis``.

    ``sparse_label=True``: ``label`` holds class indices (pred's shape without ``axis``, or with a
    size-1 ``axis``); like MXNet's ``pick(mode='clip')`` they are truncated toward zero and clipped
    into [0, C-1], never an error. ``sparse_label=False``: ``label`` has pred's shape and the loss
    is ``-sum(label * log_softmax(pred))``. ``from_logits=True`` takes ``pred`` as
    log-probabilities."""
    pred = jnp.asarray(pred)
    if not jnp.issubdtype(pred.dtype, jnp.floating):
        raise TypeError(f"pred must be a floating-point array, got dtype {pred.dtype}")
    axis = axis % pred.ndim if -pred.ndim <= axis < pred.ndim else None
    if axis is None:
        raise ValueError(f"axis out of range for pred of shape {pred.shape}")
    logp = pred if from_logits else jax.nn.log_softmax(pred, axis=axis)
    label = jnp.asarray(label)
    if not sparse_label:
        if label.shape != pred.shape:
            raise ValueError(f"dense label of shape {label.shape} must match pred {pred.shape}")
        return -jnp.sum(label.astype(pred.dtype) * logp, axis=axis)
    reduced = pred.shape[:axis] + pred.shape[axis + 1:]
    if label.shape == pred.shape[:axis] + (1,) + pred.shape[axis + 1:]:
        label = jnp.squeeze(label, axis)
    if label.shape != reduced:
        raise ValueError(f"label of shape {label.shape} must be {reduced} (pred {pred.shape} "
                         f"without axis {axis})")
    if jnp.issubdtype(label.dtype, jnp.floating):
        label = jnp.trunc(label)
    index = jnp.clip(label.astype(jnp.int32), 0, pred.shape[axis] - 1)
    picked = jnp.take_along_axis(logp, jnp.expand_dims(index, axis), axis=axis)
    return -jnp.squeeze(picked, axis)
