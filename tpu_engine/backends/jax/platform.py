"""JAX's platform: which one it runs on, and how many devices it sees."""
from __future__ import annotations

import sys

_announced = False


def platform() -> str:
    """JAX's default platform, upper-case as PJRT names it ("CPU", "TPU", "GPU"); says once
    when JAX falls back to CPU."""
    global _announced
    import jax
    name = jax.default_backend().upper()
    if name == "CPU" and not _announced:
        print("tpu_engine: no TPU found; JAX runs on CPU.", file=sys.stderr)
    _announced = True
    return name


def device_count() -> int:
    import jax
    return jax.device_count()


def device_memory_bytes() -> int | None:
    """The first device's memory limit, from its runtime (None on CPU and when unknown)."""
    import jax
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 -- a backend without memory stats
        return None
    return int(stats.get("bytes_limit") or 0) or None
