"""Strict JAX for every test: silent rank promotion fails, and 4 simulated CPU devices make
single-device assumptions fail early. Float64 is enabled so the NumPy references compare exactly.
Compiled programs are dropped after each test module, so the suite's memory does not grow with
every shape it ever compiled."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# Many tests compile the same small programs (and their subprocesses too): a session-wide
# persistent cache compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlenet-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_per_module():
    yield
    jax.clear_caches()


def pytest_sessionfinish(session):
    # The workers of a parallel run (pytest-xdist) share the cache their controller made; it
    # removes it once they have all finished.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if os.environ["JAX_COMPILATION_CACHE_DIR"].startswith(tempfile.gettempdir()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
