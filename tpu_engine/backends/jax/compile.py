"""JAX's compile counters, as the engine's CompileStats, and the compilation cache dir.

Compiles are counted from `jax.monitoring` events, JAX's own: every executable JAX builds
records one backend-compile duration event. Loads from the engine's executable store
(programs.py) count as a build and a cache hit, a store miss as a miss. A build after warm-up
therefore means a shape or a static argument that warm-up did not cover, whether or not the
cache served it.
"""
from __future__ import annotations

import logging
import threading

from ...compile import CompileStats
from ...paths import writable_dir

log = logging.getLogger(__name__)

_COMPILE = "/jax/core/compile/backend_compile_duration"


class _Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.compiles, self.seconds, self.hits, self.misses = 0, 0.0, 0, 0
        self.installed = False

    def on_duration(self, event: str, seconds: float, **_) -> None:
        if event == _COMPILE:
            with self.lock:
                self.compiles += 1
                self.seconds += seconds


_counters = _Counters()


def record_load(seconds: float) -> None:
    """An executable loaded from the engine's store (programs.py): one built, one cache hit."""
    with _counters.lock:
        _counters.compiles += 1
        _counters.seconds += seconds
        _counters.hits += 1


def install_counters() -> None:
    """Start counting (once per process, before the first compile)."""
    if _counters.installed:
        return
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(_counters.on_duration)
    _counters.installed = True


def compile_stats() -> CompileStats:
    with _counters.lock:
        return CompileStats(_counters.compiles, _counters.seconds, _counters.hits, _counters.misses)


def record_miss() -> None:
    with _counters.lock:
        _counters.misses += 1


def cache_dir(path: str) -> str:
    """The compilation cache dir, checked writable. The executable store there is the one
    cache: JAX's own persistent cache is turned off, because an executable it loaded on CPU
    serializes without its kernels ("Function ... not found" when the copy runs)."""
    path = writable_dir(path, "compilation cache dir")
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    return path
