"""The machine's peaks for the roofline, recorded with each capture: a table of TPU chips, or
measured on the spot on a CPU host (between passes, outside any timing). A live server is never
paused to measure, so its CPU captures say "not measured" rather than a number."""
from __future__ import annotations

import time

from tpu_engine.info import DeviceInfo

from ..runs.parts import Peaks

# Per-chip peaks from Google's published TPU specs: (bf16 FLOP/s, HBM bytes/s).
TPU_PEAKS = {
    "v2": (45e12, 700e9), "v3": (123e12, 900e9), "v4": (275e12, 1200e9),
    "v5 lite": (197e12, 819e9), "v5e": (197e12, 819e9), "v5p": (459e12, 2765e9),
    "v6 lite": (918e12, 1640e9), "v6e": (918e12, 1640e9),
}


def tpu_peaks(device_kind: str) -> tuple[float, float] | None:
    """(FLOP/s, bytes/s) for a TPU device kind such as 'TPU v5 lite' or 'TPU v6e'."""
    kind = device_kind.lower().replace("tpu", "").strip()
    for name in sorted(TPU_PEAKS, key=len, reverse=True):
        if kind.startswith(name):
            return TPU_PEAKS[name]
    return None


def _best_of(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> float:
    """Main-memory read bandwidth (bytes/s): a float32 sum over a buffer far larger than cache."""
    import torch
    x = torch.ones(nbytes // 4)
    return nbytes / _best_of(lambda: x.sum(), reps)


def measure_matmul(n: int = 2048, reps: int = 5) -> float:
    """Float32 matmul throughput (FLOP/s) of torch's CPU BLAS on all cores."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _best_of(lambda: a @ b, reps)


def machine_peaks(device: DeviceInfo, measure: bool) -> Peaks:
    """The table's figures on TPU; elsewhere measured now if `measure`, else none."""
    if device.platform == "TPU":
        found = tpu_peaks(device.device_kind)
        if found:
            return Peaks(found[0], found[1], f"table ({device.device_kind})")
        return Peaks(None, None, f"unknown TPU kind {device.device_kind!r}")
    if not measure:
        return Peaks(None, None, f"not measured (a live server's {device.platform} host is not paused to measure it)")
    return Peaks(measure_matmul(), measure_bandwidth(),
                 "measured on this host (torch float32 matmul, sum over 512 MiB)")
