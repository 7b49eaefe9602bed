"""Backend parametrisation from the registry: each backend's tests carry its marker (`-m jax`)."""
import pytest

from tpu_engine.backends import registry


def backend_params() -> list:
    return [pytest.param(name, marks=getattr(pytest.mark, name), id=name) for name in registry.names()]
