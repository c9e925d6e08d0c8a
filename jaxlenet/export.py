"""A trained model's inference function as serialized StableHLO (``jax.export``): portable to
machines without jaxlenet, for the CPU and CUDA GPUs, any batch size.

    exported = jax.export.deserialize(open("lenet.stablehlo", "rb").read())
    logits = exported.call(images)   # float32 (N, 1, 28, 28) in [0, 1] -> (N, 10)

The program is the reference implementation's (``jaxlenet.layers``), with the parameters inside:
the fast one calls jaxlenet's own C++ kernels, which have no compatibility guarantee."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlenet import models

PLATFORMS = ("cpu", "cuda")


def inference(network, params) -> jax.export.Exported:
    """``logits = f(images)`` of ``network`` (a built-in name or a spec, ``models.build``) with
    ``params``, exported for ``PLATFORMS`` with a symbolic batch dimension."""
    model = models.build(network, impl="reference")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    batch, = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch,) + model.input_shape, jnp.float32)
    return jax.export.export(jax.jit(lambda images: model.apply(params, images)),
                             platforms=PLATFORMS)(images)


def stablehlo_bytes(network, params) -> bytes:
    """``inference(network, params)`` serialized, for ``jax.export.deserialize``."""
    return bytes(inference(network, params).serialize())
