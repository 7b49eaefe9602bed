"""Compilation discipline, for every backend: compile counts (`CompileStats`) and the recompile
guard. After warm-up has compiled every static shape, no request within `max_model_len` may
compile again. The guard reads the backend's own counters (its `compile.py`), so a recompile
cannot hide.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

log = logging.getLogger(__name__)


class RecompileError(RuntimeError):
    """An XLA compilation happened after warm-up, where the guard forbids it."""


def default_cache_dir(name: str) -> str:
    """~/.cache/tpu_engine/<name>: each backend's cache format is its own (registry.py names it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tpu_engine", name)


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


class CompileGuard:
    """Counts compilations since `arm()`; in strict mode raises on the first one."""

    def __init__(self, stats: Callable[[], CompileStats], strict: bool = False, hint: str = ""):
        self.strict = strict
        self.armed = False
        self._stats = stats  # the backend's counters
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
                   f"({delta.compile_time_s:.2f}s)" + (f"; {self._hint}." if self._hint else "."))
            if self.strict:
                raise RecompileError(msg)
            log.warning(msg)
        return delta
