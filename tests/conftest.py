"""Suite-wide fixtures.

Every executable XLA compiles on the CPU holds memory maps of its own, and JAX keeps each
one alive in the cache of the function that compiled it. One pytest process compiles
thousands of them, and without a cleanup the suite's map count grows to about 60,000 by the
physics tests. At Linux's default ``vm.max_map_count`` of 65,530 the next compilation then
aborts the process ("Fatal Python error: Aborted" inside XLA, measured on 2026-11-28). The
caches are therefore cleared after every test module; a module's compilations are still
shared by its own tests.

The meta-training tests start ``optimus train`` several times in subprocesses (a SIGKILL
and a resume compile the same step again), and the in-memory caches are cleared after every
module. JAX's persistent compilation cache therefore points, for this process and every
subprocess it starts (through the environment), at the repository's git-ignored
``.jax_cache/`` (the folder ``optimus bench physics`` uses), so that a program compiled once
is loaded instead of compiled again, within a run and in the next one. A cache hit runs the
same XLA executable, so no result depends on it; a clean clone starts with an empty folder.
Measured on a 2-core Intel Xeon from a clean clone, it shortened the SIGKILL test from 138 s
to 75 s and left the whole suite's time within its run-to-run spread (34 min 40 s). The
multi-process tests configure a cache of their own for their subprocesses.
Every compilation is cached, however short (the threshold is 0 s): the small programs of
eager operations, compiled again in every module after the caches are cleared, are then
loaded too (with the loader's fix of the same day, a clean clone's pytest time went from
29 min 8 s to 27 min 12 s and its CPU time from 54.7 to 51.4 minutes, 2026-11-29).
``OPTIMUS_TEST_JAX_CACHE=DIR`` uses DIR instead. Under pytest-xdist (``make test`` runs two
workers) each worker uses a subfolder named after it.

Most of the suite's time is XLA compiling programs that then run for milliseconds (tiny
problems, short runs), so the suite compiles with XLA's older CPU fusion code generator
(``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false``), which compiles faster and makes slower
code. Measured on a 2-core Intel Xeon (2026-11-29): backend compilation of an ``optimus``
solve 4.99 -> 4.14 s and of a BFGS solve 2.68 -> 1.51 s; four test modules (minimize,
reliability, interop, batch; 112 tests, two workers, empty caches, back to back) 405 -> 266 s
of wall time and 771 -> 503 s of CPU time. The library does not set it: the compiled steps
run slower with it (``scripts/step_cost.py`` at n = 1000: ``optimus`` 8.7 -> 12.0 ms,
``optimus-noprecond`` 5.4 -> 7.8 ms, ``mlp`` 0.62 -> 1.2 ms). The flag changes how XLA
generates code, not what a program computes; ``OPTIMUS_TEST_XLA_DEFAULTS=1`` runs the suite
with XLA's defaults, the code users get.
"""

import gc
import os
from pathlib import Path

_CACHE_DIR = os.environ.get("OPTIMUS_TEST_JAX_CACHE") or str(
    Path(__file__).resolve().parents[1] / ".jax_cache"
)
# Under pytest-xdist each worker (and the subprocesses it starts) gets a folder of its own:
# JAX writes cache entries in place, so a worker could otherwise read another's half-written file.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _CACHE_DIR = os.path.join(_CACHE_DIR, os.environ["PYTEST_XDIST_WORKER"])
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
# XLA's older fusion code generator (see the module docstring), for this process and every
# subprocess it starts; OPTIMUS_TEST_XLA_DEFAULTS=1 keeps XLA's defaults.
_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
_flags = os.environ.get("XLA_FLAGS", "")
if (
    os.environ.get("OPTIMUS_TEST_XLA_DEFAULTS") != "1"
    and "xla_cpu_use_fusion_emitters" not in _flags
):
    os.environ["XLA_FLAGS"] = f"{_flags} {_XLA_FLAG}".strip()
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402  (after the environment above, which JAX reads at import)
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)  # in case JAX was imported before
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    yield
    jax.clear_caches()
    gc.collect()


# Modules whose tests take minutes (meta-training subprocesses, the simulator's compilation),
# heaviest first. `make test` runs the suite on two pytest-xdist workers, one module per
# worker at a time (--dist loadfile), handed out in collection order; a heavy module started
# last would leave one worker running alone at the end, so these are collected first.
_HEAVY_MODULES = (
    "test_train.py",
    "test_physics.py",
    "test_distributed.py",
    "test_scripts.py",
    "test_docs.py",
    "test_network.py",
    "test_bench.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _HEAVY_MODULES.index(name) if name in _HEAVY_MODULES else len(_HEAVY_MODULES)

    items.sort(key=rank)  # stable: the order within a module and among the rest is kept
