"""Suite-wide fixtures.

Every executable XLA compiles on the CPU holds memory maps of its own, and JAX keeps each
one alive in the cache of the function that compiled it. One pytest process compiles
thousands of them, and without a cleanup the suite's map count grows to about 60,000 by the
physics tests. At Linux's default ``vm.max_map_count`` of 65,530 the next compilation then
aborts the process ("Fatal Python error: Aborted" inside XLA, measured on 2026-11-28). The
caches are therefore cleared after every test module; a module's compilations are still
shared by its own tests.
"""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    yield
    jax.clear_caches()
    gc.collect()
