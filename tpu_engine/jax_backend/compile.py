"""JAX's compile counters and persistent compilation cache, as the engine's CompileStats.

Counted from `jax.monitoring` events, JAX's own: every executable JAX builds (a compile, or a
load from the persistent cache) records one backend-compile duration event, and cache hits and
misses record events of their own. A backend-compile event after warm-up therefore means a
shape or a static argument that warm-up did not cover, whether or not the cache served it.
"""
from __future__ import annotations

import logging
import threading

from ..compile import CompileStats
from ..paths import writable_dir

log = logging.getLogger(__name__)

_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"


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

    def on_event(self, event: str, **_) -> None:
        if event in (_HIT, _MISS):
            with self.lock:
                if event == _HIT:
                    self.hits += 1
                else:
                    self.misses += 1


_counters = _Counters()


def install_counters() -> None:
    """Start counting (once per process, before the first compile)."""
    if _counters.installed:
        return
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(_counters.on_duration)
    jax.monitoring.register_event_listener(_counters.on_event)
    _counters.installed = True


def compile_stats() -> CompileStats:
    with _counters.lock:
        return CompileStats(_counters.compiles, _counters.seconds, _counters.hits, _counters.misses)


_cache_dir: str | None = None


def init_persistent_cache(path: str) -> str:
    """Point JAX's persistent compilation cache at `path` (one per process, as torch_xla's).
    Every executable is cached, however small or quick to compile: on CPU that is all of them."""
    global _cache_dir
    if _cache_dir is not None:
        return _cache_dir
    path = writable_dir(path, "compilation cache dir")
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cache_dir = path
    return path
