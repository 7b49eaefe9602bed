"""Compilation discipline: persistent cache, compile counters and the recompile guard.

After warm-up has compiled every static shape, no request within `max_model_len` may compile
again. The guard reads torch_xla's own counters (`CompileTime` samples, `UncachedCompile`), so
a recompile cannot hide.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from .paths import writable_dir

log = logging.getLogger(__name__)
_cache_dir: str | None = None


class RecompileError(RuntimeError):
    """An XLA compilation happened after warm-up, where the guard forbids it."""


def default_cache_dir(backend: str = "xla") -> str:
    """~/.cache/tpu_engine/xla_cache (torch_xla) or jax_cache: the two formats differ."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tpu_engine", f"{backend}_cache")


def init_persistent_cache(path: str) -> str | None:
    """Point torch_xla's persistent compilation cache at `path` (once per process).

    Returns the directory in use; a second call with another path keeps the first, as the
    runtime allows one cache per process."""
    global _cache_dir
    if _cache_dir is not None:
        if os.path.abspath(path) != _cache_dir:
            log.warning("compilation cache already set to %s for this process; ignoring %s", _cache_dir, path)
        return _cache_dir
    path = writable_dir(path, "compilation cache dir")
    import torch_xla.runtime as xr
    xr.initialize_cache(path, readonly=False)
    _cache_dir = path
    return _cache_dir


@dataclasses.dataclass(frozen=True)
class CompileStats:
    compiles: int          # XLA compilations (samples of the CompileTime metric)
    compile_time_s: float  # total seconds spent compiling
    cache_hits: int        # persistent-cache hits
    cache_misses: int      # persistent-cache misses

    @classmethod
    def from_json(cls, data: dict) -> "CompileStats":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def __sub__(self, other: "CompileStats") -> "CompileStats":
        return CompileStats(self.compiles - other.compiles,
                            self.compile_time_s - other.compile_time_s,
                            self.cache_hits - other.cache_hits,
                            self.cache_misses - other.cache_misses)


def compile_stats() -> CompileStats:
    import torch_xla.debug.metrics as met
    data = met.metric_data("CompileTime")
    count, total_ns = (data[0], data[1]) if data else (0, 0.0)
    return CompileStats(int(count), total_ns / 1e9,
                        int(met.counter_value("PersistentCacheHit") or 0),
                        int(met.counter_value("PersistentCacheMiss") or 0))


class CompileGuard:
    """Counts compilations since `arm()`; in strict mode raises on the first one."""

    def __init__(self, strict: bool = False, stats=None, hint: str = "set PT_XLA_DEBUG_LEVEL=2 to see why"):
        self.strict = strict
        self.armed = False
        self._stats = stats or compile_stats  # the backend's counters
        self._hint = hint
        self._base = self._stats()
        self.warmup: CompileStats | None = None

    def arm(self) -> None:
        """Warm-up is done: everything compiled so far is the warm-up's."""
        now = self._stats()
        self.warmup = now - self._base
        self._base = now
        self.armed = True

    def since_armed(self) -> CompileStats:
        return self._stats() - self._base

    def check(self, before: CompileStats, what: str) -> CompileStats:
        """Compilations since `before` (a `compile_stats()` taken before `what` ran)."""
        delta = self._stats() - before
        if self.armed and delta.compiles:
            msg = (f"{what} compiled {delta.compiles} XLA graph(s) after warm-up "
                   f"({delta.compile_time_s:.2f}s); {self._hint}.")
            if self.strict:
                raise RecompileError(msg)
            log.warning(msg)
        return delta
