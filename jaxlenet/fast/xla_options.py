"""The XLA:CPU compiler options the fast implementation compiles its programs with."""

from __future__ import annotations

import functools

import jax
import numpy as np

# XLA:CPU hands convolutions, dots and reductions to YNNPACK but not elementwise ops, and a
# convolution YNNPACK runs alone is several times slower than one fused with its bias
# (docs/performance.md, "YNNPACK's lone convolutions").
_YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"


def _ynn_types(*kinds: str) -> str:
    return ",".join("LIBRARY_FUSION_TYPE_" + kind for kind in kinds)


CPU_OPTIONS = {_YNN_FUSION_TYPE: _ynn_types("DOT", "ELTWISE", "REDUCE", "INDIVIDUAL_CONVOLUTION")}
# Where jaxlenet's C++ kernels run every convolution, YNNPACK's reductions (the max pools' maxima)
# run slower than XLA's own loops: training steps of LeNet 8.87 -> 8.63 ms at batch 128, 17.29 ->
# 17.12 at 256, LeNet-5 5.68 -> 5.49 at 128. Where XLA runs the convolutions, they pay (LeNet
# 27.5 ms with them, 30.1 without), and without the elementwise fusions LeNet-5's sigmoids run
# slower (6.32 ms).
KERNELS_CPU_OPTIONS = {_YNN_FUSION_TYPE: _ynn_types("DOT", "ELTWISE", "INDIVIDUAL_CONVOLUTION")}


# The parameters' init program runs once, and LLVM's full optimisation of its random-number loops
# made it the slowest program of a first run to compile (2.2-2.5 s on a busy machine, against
# 1.4-1.5 s for a training epoch); at level 1 it compiles in 0.9-1.1 s to bitwise the same
# parameters (tests/test_fast.py).
INIT_CPU_OPTIONS = {"xla_backend_optimization_level": "1"}


def compiler_options(platform: str = "cpu", *, xla_convolutions: bool = True) -> dict[str, str]:
    """Options for ``jax.jit(..., compiler_options=...)`` of a program that runs jaxlenet's fast
    implementation on ``platform``: empty except on the CPU, and empty there too if this jaxlib
    does not know them. ``xla_convolutions=False`` says that the program leaves no convolution
    to XLA (``fast.layers.convolutions_on_kernels``). Code that jits ``jaxlenet.fast`` layers
    itself gets the same speed with ``jax.jit(f, compiler_options=fast.compiler_options())``."""
    if platform != "cpu":
        return {}
    return accepted(CPU_OPTIONS if xla_convolutions else KERNELS_CPU_OPTIONS)


def init_compiler_options(platform: str = "cpu") -> dict[str, str]:
    """Options for the ``jax.jit`` of a fast model's parameter initialisation on ``platform``:
    faster to compile, the same values."""
    # No trial compilation (``accepted``): every XLA knows its optimisation level.
    return dict(INIT_CPU_OPTIONS) if platform == "cpu" else {}


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
