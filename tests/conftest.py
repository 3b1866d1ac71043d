"""Test-wide set-up: 8 forced CPU devices so sharding is tested without accelerators.

XLA reads the flag once, when jax first initialises, so it is set before anything imports jax.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One compilation cache for the whole run: pytest's workers inherit it from the controlling process,
# and the CLI subprocesses the tests start inherit it from them. The same tiny programs compile in
# dozens of tests (the two own-tables CLI tests: 86 s alone, 45 s sharing it). It starts empty, so
# no run reads another's programs. A size limit turns on JAX's file lock around each entry, so no
# process reads one that another is still writing.
_OWN_CACHE = None  # set in the process that makes the cache, which removes it at the end
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="ff_jax_tests_compiled-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_OWN_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30))


import pytest  # noqa: E402  (after the XLA flag, which must be set before jax is imported)


@pytest.fixture(autouse=True)
def _no_gin_state_between_tests():
    """Gin bindings are process-wide: one test's parse must not reach the next test on the worker."""
    yield
    import gin

    gin.clear_config()


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_between_modules():
    """A worker runs hundreds of tests; the jitted programs and arrays each module leaves behind
    add up (a worker reached 13 GB and was OOM-killed on the 24 GB machine). Drop them per module."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_feed_world_dir(tmp_path_factory):
    """One DATA_DIR for the CLI trainings of experiments/tiny_smoke.gin on this worker: feed_world
    is prepared there by the first run and reused by the others (each test's own dir prepared it anew)."""
    return tmp_path_factory.mktemp("tiny_feed_world")


def pytest_unconfigure(config):
    """The process that made the compilation cache removes it (workers leave it to that process)."""
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
