"""jaxlenet's fast implementation: faster formulations of the reference ops (``jaxlenet.layers``)
for XLA:CPU, kept beside the reference, never inside it.

Each function names the reference it equals and is tested against it (tests/test_fast.py). A model
chooses between the two once, when it is built (``models.build(..., impl="auto" | "reference" |
"fast")``; "auto" is this implementation on the CPU in float32). Why each formulation, measured:
docs/performance.md.

- ``conv``: channels-last 2-D convolutions (row matmul, custom VJP, zero-padded filters);
  ``conv_weight_and_bias_grads`` and ``conv_input_grad``, their gradients.
- ``max_pool``: max pool of non-overlapping windows with a cheap first-maximum gradient.
- ``conv_max_pool``: a few-channel convolution and its max pool as one space-to-depth convolution.
- ``layers``: the reference layers' constructors over these, and ``fuse_conv_pool``.
- ``kernels``: C++ kernels (``kernels.cc``) XLA calls through its FFI on the CPU.
- ``compiler_options``, ``init_compiler_options``: the XLA:CPU options the fast programs and the
  parameters' init program are compiled with.
"""

from jaxlenet.fast import layers
from jaxlenet.fast.conv2d import conv
from jaxlenet.fast.conv2d import input_grad as conv_input_grad
from jaxlenet.fast.conv2d import weight_and_bias_grads as conv_weight_and_bias_grads
from jaxlenet.fast.conv_pool import conv_max_pool
from jaxlenet.fast.kernels import available as kernels_available
from jaxlenet.fast.pool import max_pool
from jaxlenet.fast.xla_options import compiler_options, init_compiler_options

__all__ = ["conv", "conv_input_grad", "conv_weight_and_bias_grads", "conv_max_pool", "max_pool",
           "layers", "kernels_available", "compiler_options", "init_compiler_options"]
