"""jaxlenet's hand-written CPU kernels (``kernels.cc``), called from XLA through its FFI.

Where XLA:CPU runs part of a training step far below the machine's speed and a short C++ loop
does much better (docs/performance.md), the loop runs instead: on the CPU, for float32. Everywhere
else (a GPU, float64, no kernels) the XLA formulation runs, which the tests compare the kernels
with. The source is compiled on first use, or by ``kernels.build()`` (which
``scripts/setup.sh`` calls), into the user cache, keyed by the source and the jaxlib version, with
the library's SHA-256 beside it: a library that does not match it (truncated, replaced, empty) is
rebuilt, never loaded. Building needs a C++ compiler (``$CXX``, ``g++`` or ``c++``) and an x86-64
CPU with AVX-512, or AVX2 and FMA; without them jaxlenet warns once and runs XLA's formulation.
``JAXLENET_CPU_KERNELS=0`` turns the kernels off; ``JAXLENET_CPU_KERNELS=avx2`` (or ``avx512``)
runs that build of them, where the CPU has it (an AVX-512 machine can run the AVX2 build).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

from jaxlenet._files import atomic_write, remove_partial_writes, user_cache

_SOURCE = pathlib.Path(__file__).with_name("kernels.cc")
_PARAM_GRADS = "jaxlenet_conv_param_grads"
_FORWARD = "jaxlenet_conv_forward"
_INPUT_GRAD = "jaxlenet_conv_input_grad"
_POOL_PARAM_GRADS = "jaxlenet_conv_pool_param_grads"
_MAX_FORWARD = "jaxlenet_conv_max_forward"
_POOL_FORWARD = "jaxlenet_conv_pool_forward"
_POOL_INPUT_GRAD = "jaxlenet_conv_pool_input_grad"
# The instruction sets the kernels are written for, widest first: the CPU flags each needs (as
# Linux's /proc/cpuinfo names them) and the compiler's flags for it.
_INSTRUCTION_SETS = {"avx512": ({"avx512f", "fma"}, ["-mavx512f", "-mfma"]),
                     "avx2": ({"avx2", "fma"}, ["-mavx2", "-mfma"])}


def conv_param_grads(x, dy, kernel, fallback):
    """The gradients with respect to the weight (O, C, kh, kw) and the bias (O,) of a stride-1
    convolution of ``x`` (N, H, W, C), padded already, with a ``kernel`` (kh, kw), given its
    output's cotangent ``dy`` (N, H-kh+1, W-kw+1, O): by the C++ kernel on the CPU,
    ``fallback(x, dy)`` elsewhere (see ``_on_cpu``)."""
    def on_cpu(x, dy):
        out_channels = dy.shape[-1]
        shapes = (jax.ShapeDtypeStruct((out_channels, *kernel, x.shape[-1]), jnp.float32),
                  jax.ShapeDtypeStruct((out_channels,), jnp.float32))
        dw, db = jax.ffi.ffi_call(_PARAM_GRADS, shapes, vmap_method="sequential")(x, dy)
        return jnp.transpose(dw, (0, 3, 1, 2)), db

    return _on_cpu(on_cpu, fallback, x, dy)


def conv_pool_param_grads(x, first, dmax, kernel, window, fallback):
    """The gradients with respect to the weight (O, C, kh, kw) and the bias (O,) of a stride-1
    convolution of ``x`` (N, H, W, C), padded already, with a ``kernel`` (kh, kw), followed by a
    max pool of non-overlapping ``window`` (ph, pw) windows, given for every window and filter
    the first position holding the maximum, ``first`` (N, Hp, Wp, O) int32 (p = row * pw +
    column; ph * pw where the maximum is NaN), and the maximum's cotangent ``dmax`` (N, Hp, Wp,
    O): only that position passes a gradient, and the kernel reads x there alone (nowhere for a
    window whose cotangent is zero). ``fallback(x, first, dmax)`` elsewhere."""
    def on_cpu(x, first, dmax):
        shapes = (jax.ShapeDtypeStruct((dmax.shape[-1], *kernel, x.shape[-1]), jnp.float32),
                  jax.ShapeDtypeStruct((dmax.shape[-1],), jnp.float32))
        dw, db = jax.ffi.ffi_call(_POOL_PARAM_GRADS, shapes, vmap_method="sequential")(
            x, first.astype(jnp.int32), dmax, window=np.asarray(window, np.int64))
        return jnp.transpose(dw, (0, 3, 1, 2)), db

    return _on_cpu(on_cpu, fallback, x, first, dmax)


def conv_forward(x, weight, bias, fallback, *, padding=(0, 0, 0, 0)):
    """A stride-1 convolution of ``x`` (N, H, W, C), zero-padded by ``padding`` (rows on top and
    bottom, columns left and right, each >= 0), with ``weight`` (O, C, kh, kw) and ``bias``
    (O,): (N, H+top+bottom-kh+1, W+left+right-kw+1, O) by the C++ kernel on the CPU, which pads
    each image in cache and skips the taps that read only padding; ``fallback(x, weight, bias)``
    elsewhere (see ``_on_cpu``)."""
    top, bottom, left, right = padding

    def on_cpu(x, weight, bias):
        out_channels, _, kh, kw = weight.shape
        shape = jax.ShapeDtypeStruct((x.shape[0], x.shape[1] + top + bottom - kh + 1,
                                      x.shape[2] + left + right - kw + 1, out_channels),
                                     jnp.float32)
        return jax.ffi.ffi_call(_FORWARD, shape, vmap_method="sequential")(
            x, jnp.transpose(weight, (2, 3, 1, 0)), bias,
            padding=np.asarray(padding, np.int64))

    return _on_cpu(on_cpu, fallback, x, weight, bias)


def conv_input_grad(dy, weight, fallback, *, padding=(0, 0, 0, 0), input_shape):
    """The gradient with respect to the input (N, H, W, C) = ``input_shape`` of a stride-1
    convolution of it, zero-padded by ``padding`` (rows on top and bottom, columns left and
    right, each >= 0), with ``weight`` (O, C, kh, kw), given its output's cotangent ``dy``
    (N, H+top+bottom-kh+1, W+left+right-kw+1, O): by the C++ kernel on the CPU, which multiplies
    dy by the weight and adds each product where it falls inside the image (no padded dy, no
    zeros multiplied); ``fallback(dy, weight)`` elsewhere (see ``_on_cpu``)."""
    def on_cpu(dy, weight):
        return jax.ffi.ffi_call(_INPUT_GRAD, jax.ShapeDtypeStruct(input_shape, jnp.float32),
                                vmap_method="sequential")(
            dy, jnp.transpose(weight, (0, 2, 3, 1)), padding=np.asarray(padding, np.int64))

    return _on_cpu(on_cpu, fallback, dy, weight)


def conv_max_forward(x, weight, bias, positions, fallback, *, relu: bool = False):
    """``conv_forward`` for a convolution whose P*O filters are the P = ``positions`` positions
    of a max pool's windows times O filters (``weight`` (P*O, C, kh, kw)), followed by the max
    over the positions: (top, first), both (N, H-kh+1, W-kw+1, O), top the max over p of filter
    p*O + o (NaN where one is NaN; with ``relu``, its ReLU), first the first p holding it
    (int32; P where the max is NaN). The convolution's output is never written out whole.
    ``fallback(x, weight, bias)`` elsewhere, which must give the same (top, first)."""
    def on_cpu(x, weight, bias):
        _, _, kh, kw = weight.shape
        shape = (x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1,
                 weight.shape[0] // positions)
        return jax.ffi.ffi_call(
            _MAX_FORWARD, (jax.ShapeDtypeStruct(shape, jnp.float32),
                           jax.ShapeDtypeStruct(shape, jnp.int32)),
            vmap_method="sequential")(x, jnp.transpose(weight, (2, 3, 1, 0)), bias,
                                      relu=np.int64(relu))

    return _on_cpu(on_cpu, fallback, x, weight, bias)


def conv_pool_input_grad(first, dmax, weight, window, fallback, *, input_shape):
    """The gradient with respect to the input (N, H, W, C) = ``input_shape`` (padded already)
    of a stride-1 convolution with ``weight`` (O, C, kh, kw) followed by a max pool of
    non-overlapping ``window`` (ph, pw) windows, given the first position p = pi * pw + pj of
    each window holding the max, ``first`` (N, Hp, Wp, O) int32 (ph * pw where the max is NaN),
    and the max's cotangent ``dmax`` (same shape): by the C++ kernel on the CPU, which adds one
    kernel's worth per window and filter whose cotangent is not zero; ``fallback(first, dmax,
    weight)`` elsewhere."""
    def on_cpu(first, dmax, weight):
        return jax.ffi.ffi_call(_POOL_INPUT_GRAD,
                                jax.ShapeDtypeStruct(input_shape, jnp.float32),
                                vmap_method="sequential")(
            first.astype(jnp.int32), dmax, jnp.transpose(weight, (0, 2, 3, 1)),
            window=np.asarray(window, np.int64))

    return _on_cpu(on_cpu, fallback, first, dmax, weight)


def conv_pool_forward(x, weight, bias, window, fallback, *, relu: bool = False):
    """A stride-1 convolution of ``x`` (N, H, W, C), padded already, with ``weight`` (O, C, kh,
    kw) and ``bias`` (O,), then the max pool of its non-overlapping ``window`` (ph, pw) windows:
    (top, first), both (N, (H-kh+1) // ph, (W-kw+1) // pw, O), top the max (NaN where one is
    NaN; with ``relu``, its ReLU), first the first position p = pi * pw + pj holding it (int32;
    ph * pw where the max is NaN). The convolution's output is never written out.
    ``fallback(x, weight, bias)`` elsewhere, which must give the same (top, first)."""
    def on_cpu(x, weight, bias):
        _, _, kh, kw = weight.shape
        shape = (x.shape[0], (x.shape[1] - kh + 1) // window[0],
                 (x.shape[2] - kw + 1) // window[1], weight.shape[0])
        return jax.ffi.ffi_call(
            _POOL_FORWARD, (jax.ShapeDtypeStruct(shape, jnp.float32),
                            jax.ShapeDtypeStruct(shape, jnp.int32)),
            vmap_method="sequential")(x, jnp.transpose(weight, (2, 3, 1, 0)), bias,
                                      window=np.array(window, np.int64), relu=np.int64(relu))

    return _on_cpu(on_cpu, fallback, x, weight, bias)


def run_on(*arrays) -> bool:
    """Whether the kernels take these arrays where the program runs on the CPU: their floating
    arrays are all float32, and the kernels are ``available()``."""
    floats = [jnp.result_type(a) for a in arrays
              if jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    return all(dtype == jnp.float32 for dtype in floats) and available()


def _on_cpu(kernel, fallback, *args):
    """``kernel(*args)`` where the program runs on the CPU and ``run_on(*args)``,
    ``fallback(*args)`` otherwise."""
    if not run_on(*args):
        return fallback(*args)
    return lax.platform_dependent(*args, cpu=kernel, default=fallback)


@functools.cache
def available() -> bool:
    """Whether the kernels are built, this CPU runs them, and XLA knows them (built and registered
    now if need be)."""
    if _switch() == "0" or instruction_set() is None:
        return False
    try:
        library = ctypes.CDLL(str(build()))
    except OSError as error:
        warnings.warn(f"jaxlenet runs XLA's slower formulations of some convolutions: its CPU "
                      f"kernels did not build or load ({error})", stacklevel=2)
        return False
    if not library.cpu_kernels_supported():
        return False
    for name, handler in ((_PARAM_GRADS, library.JaxlenetConvParamGrads),
                          (_FORWARD, library.JaxlenetConvForward),
                          (_INPUT_GRAD, library.JaxlenetConvInputGrad),
                          (_POOL_PARAM_GRADS, library.JaxlenetConvPoolParamGrads),
                          (_MAX_FORWARD, library.JaxlenetConvMaxForward),
                          (_POOL_FORWARD, library.JaxlenetConvPoolForward),
                          (_POOL_INPUT_GRAD, library.JaxlenetConvPoolInputGrad)):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def _switch() -> str:
    """``$JAXLENET_CPU_KERNELS``: '0' (off), '1' (on, the widest build; the default) or the name
    of an instruction set whose build to run."""
    value = os.environ.get("JAXLENET_CPU_KERNELS", "1").strip().lower()
    if value not in ("0", "1", *_INSTRUCTION_SETS):
        warnings.warn(f"JAXLENET_CPU_KERNELS={value!r} is not one of 0, 1, "
                      f"{', '.join(_INSTRUCTION_SETS)}: the kernels run as with 1", stacklevel=3)
        return "1"
    return value


@functools.cache
def instruction_set() -> str | None:
    """The instruction set ("avx512", "avx2") whose build of the kernels runs: the widest this CPU
    has, or the one ``$JAXLENET_CPU_KERNELS`` names if the CPU has it; None where there is none
    (not x86-64, neither set, or no /proc/cpuinfo to tell)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f
                          if line.startswith("flags")), set())
    except OSError:
        return None
    has = [name for name, (needs, _) in _INSTRUCTION_SETS.items() if needs <= flags]
    wanted = _switch()
    if wanted in _INSTRUCTION_SETS:
        if wanted not in has:
            warnings.warn(f"JAXLENET_CPU_KERNELS={wanted}: this CPU lacks it; the kernels run as "
                          f"with 1 ({has[0] if has else 'off: the CPU has neither set'})",
                          stacklevel=2)
        else:
            return wanted
    return has[0] if has else None


def build(isa: str | None = None) -> pathlib.Path:
    """Compiles ``kernels.cc`` for the instruction set ``isa`` (default: ``instruction_set()``)
    into the user cache unless a library that matches the SHA-256 recorded beside it at build
    time is there already; returns the shared library's path. Raises OSError (the compiler's
    message in it) if it cannot."""
    isa = isa or instruction_set()
    if isa not in _INSTRUCTION_SETS:
        raise OSError(f"jaxlenet's kernels need an x86-64 CPU with AVX-512 or AVX2 and FMA; "
                      f"instruction set {isa!r} is not one of {sorted(_INSTRUCTION_SETS)}")
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + jaxlib.__version__.encode()).hexdigest()[:16]
    library = user_cache() / "kernels" / f"cpu_kernels-{key}-{isa}.so"
    if _intact(library):
        return library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler: set $CXX or install g++")
    library.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(library.parent, older_than=3600)  # a younger one may be building
    # Built beside its final name and renamed into place: a process that finds the library finds
    # it whole, also while another one is building it.
    fd, partial = tempfile.mkstemp(dir=library.parent, prefix=library.name + ".", suffix=".part")
    os.close(fd)
    command = [compiler, "-O3", *_INSTRUCTION_SETS[isa][1], "-std=c++17", "-shared", "-fPIC",
               "-pthread", "-w", f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", partial]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        digest = hashlib.sha256(pathlib.Path(partial).read_bytes()).hexdigest()
        atomic_write(_digest_file(library), digest.encode())
        os.replace(partial, library)
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)
    return library


def _digest_file(library: pathlib.Path) -> pathlib.Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: pathlib.Path) -> bool:
    """Whether ``library`` holds exactly the bytes its build recorded: loading a truncated shared
    library kills the process (SIGBUS), and a foreign one would be called as ours."""
    try:
        recorded = _digest_file(library).read_text().strip()
        return hashlib.sha256(library.read_bytes()).hexdigest() == recorded
    except OSError:
        return False

