"""The profiler of each engine backend: `xla_profiler` (torch_xla) and `jax_profiler` (JAX) offer
the same four things (`start_server`, `Session`, `request_trace`, `marker`). A process runs one
backend, and only that backend's profiler sees its events, so captures use the engine's."""
from __future__ import annotations

from types import ModuleType

from tpu_engine.backends.jax import profiler as jax_profiler
from tpu_engine.backends.torch_xla import profiler as xla_profiler

BACKENDS = {"torch_xla": xla_profiler, "jax": jax_profiler}


def profiler_for(backend: str) -> ModuleType:
    """The profiler module of `backend` ("torch_xla" or "jax"); ValueError for any other, and for
    a bad profiler setting in the environment (checked here, before any model loads)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} has no profiler; use one of {', '.join(BACKENDS)}.")
    if backend == "jax":
        jax_profiler.Options.from_env()
    return BACKENDS[backend]


def profiler_of(engine) -> ModuleType:
    """The profiler of an LLMEngine's backend."""
    return profiler_for(getattr(engine.config, "backend", "torch_xla"))
