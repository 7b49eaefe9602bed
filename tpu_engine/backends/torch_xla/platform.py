"""torch_xla's platform: the PJRT device, chosen before torch_xla starts (the user's PJRT_DEVICE,
else TPU, else CPU), and how many devices it has."""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)
_announced = False


def _tpu_present() -> bool:
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def platform() -> str:
    """Set PJRT_DEVICE if the user has not, and say once when falling back to CPU."""
    global _announced
    chosen = os.environ.get("PJRT_DEVICE")
    if not chosen:
        chosen = "TPU" if _tpu_present() else "CPU"
        os.environ["PJRT_DEVICE"] = chosen
        if chosen == "CPU" and not _announced:
            print("tpu_engine: no TPU found; running on PJRT_DEVICE=CPU.", file=sys.stderr)
    _announced = True
    return chosen


def device_count() -> int:
    platform()
    import torch_xla.runtime as xr
    return xr.global_runtime_device_count()


def device_memory_bytes() -> int | None:
    """The first device's memory limit, from its runtime (None when unknown)."""
    try:
        import torch_xla
        import torch_xla.core.xla_model as xm
        info = xm.get_memory_info(torch_xla.device()) or {}
    except Exception:  # noqa: BLE001 -- a runtime without memory info
        return None
    return int(info.get("bytes_limit") or info.get("kb_total", 0) * 1024) or None
