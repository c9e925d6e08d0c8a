"""Strict JAX for every test: silent rank promotion fails, and 4 simulated CPU devices make
single-device assumptions fail early. Float64 is enabled so the NumPy references compare exactly.
Compiled programs are dropped after each test module, so the suite's memory does not grow with
every shape it ever compiled."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_per_module():
    yield
    jax.clear_caches()
