"""torch_xla's compile counters (its `CompileTime` metric and persistent-cache counters) and its
persistent compilation cache."""
from __future__ import annotations

import logging
import os

from ...compile import CompileStats
from ...paths import writable_dir

log = logging.getLogger(__name__)
_cache_dir: str | None = None


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


def compile_stats() -> CompileStats:
    import torch_xla.debug.metrics as met
    data = met.metric_data("CompileTime")
    count, total_ns = (data[0], data[1]) if data else (0, 0.0)
    return CompileStats(int(count), total_ns / 1e9,
                        int(met.counter_value("PersistentCacheHit") or 0),
                        int(met.counter_value("PersistentCacheMiss") or 0))
