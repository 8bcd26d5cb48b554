"""Accuracy tests run in float64; float32 tests opt in with the ``float32`` fixture."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def float32():
    """Run a test with x64 disabled (float32 defaults), restoring it afterwards."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)
