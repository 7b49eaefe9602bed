"""The profiler of the engine's backend (its `profiler.py`, found through the backend registry):
a process runs one backend, and only that backend's profiler sees its events."""
from __future__ import annotations

from types import ModuleType

from tpu_engine.backends import registry


def profiler_for(backend: str) -> ModuleType:
    """The profiler module of `backend`; ValueError for an unknown backend, and for a bad
    profiler setting in the environment (checked here, before any model loads)."""
    profiler = registry.get(backend).profiler()
    profiler.check_settings()
    return profiler


def profiler_of(engine) -> ModuleType:
    """The profiler of an LLMEngine's backend."""
    return profiler_for(engine.config.backend)
