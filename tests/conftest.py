"""Test-wide set-up: 8 forced CPU devices so sharding is tested without accelerators.

XLA reads the flag once, when jax first initialises, so it is set before anything imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402  (after the XLA flag, which must be set before jax is imported)


@pytest.fixture(autouse=True)
def _no_gin_state_between_tests():
    """Gin bindings are process-wide: one test's parse must not reach the next test on the worker."""
    yield
    import gin

    gin.clear_config()
