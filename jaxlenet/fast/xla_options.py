"""The XLA:CPU compiler options the fast implementation compiles its programs with."""

from __future__ import annotations

import functools

import jax
import numpy as np

# XLA:CPU hands convolutions, dots and reductions to YNNPACK but not elementwise ops, and a
# convolution YNNPACK runs alone is several times slower than one fused with its bias
# (docs/performance.md, "YNNPACK's lone convolutions").
_YNN_TYPES = ",".join("LIBRARY_FUSION_TYPE_" + kind for kind in
                      ("DOT", "ELTWISE", "REDUCE", "INDIVIDUAL_CONVOLUTION"))
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": _YNN_TYPES}


def compiler_options(platform: str = "cpu") -> dict[str, str]:
    """Options for ``jax.jit(..., compiler_options=...)`` of a program that runs jaxlenet's fast
    implementation on ``platform``: empty except on the CPU, and empty there too if this jaxlib
    does not know them. Code that jits ``jaxlenet.fast`` layers itself gets the same speed with
    ``jax.jit(f, compiler_options=fast.compiler_options())``."""
    return accepted(CPU_OPTIONS) if platform == "cpu" else {}


def accepted(options: dict[str, str]) -> dict[str, str]:
    """``options`` if this jaxlib's CPU compiler accepts them, else none: an unknown option
    aborts a compilation, so they are tried once on a trivial program."""
    return dict(_accepted(tuple(sorted(options.items()))))


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    try:
        on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jax.ShapeDtypeStruct((), np.float32, sharding=on_cpu)).compile()
    except Exception:  # any refusal means: compile without them
        return ()
    return options
