"""Memory: host-memory hygiene shared by every backend, and whether a model fits before anything
is allocated.

The static KV cache is sized by the settings alone (every slot holds max_model_len positions),
so `--max-num-seqs 100000` is known to need hundreds of GB before the allocator fails with a
traceback: `check_fits` says so in one sentence. Needed per device: the weights and the KV
cache (2 x layers x (slots x max_model_len + 1 scratch row) x KV heads x head dim), both split
over tensor-parallel devices. Available: on CPU the host's MemAvailable; on an accelerator the
device's memory limit as its backend's runtime reports it (no check when it reports none).
"""
from __future__ import annotations

import ctypes

_BYTES = {"float32": 4, "bfloat16": 2}


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): loading and compiling
    free a lot of short-lived memory, and the process's peak RSS should show what it keeps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def kv_cache_bytes(cfg, max_num_seqs: int, max_model_len: int, dtype: str) -> int:
    rows = max_num_seqs * max_model_len + 1
    return 2 * cfg.num_hidden_layers * rows * cfg.num_key_value_heads * cfg.head_dim * _BYTES[dtype]


def host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(cfg, *, max_num_seqs: int, max_model_len: int, dtype: str, tensor_parallel_size: int,
               platform: str, device_bytes) -> None:
    """ValueError (one sentence naming the settings) when weights plus KV cache exceed what a
    device has; `device_bytes()` is the backend's figure for an accelerator (None: unknown)."""
    kv = kv_cache_bytes(cfg, max_num_seqs, max_model_len, dtype)
    weights = cfg.num_params() * _BYTES[dtype]
    need = (kv + weights) // tensor_parallel_size
    have = host_available_bytes() if platform == "CPU" else device_bytes()
    if have is None or need <= have:
        return
    where = "available on this host" if platform == "CPU" else f"on each {platform} device"
    raise ValueError(f"the KV cache for max_num_seqs {max_num_seqs} x max_model_len {max_model_len} needs "
                     f"{_gib(kv)} (plus {_gib(weights)} of weights) but {_gib(have)} is {where}; lower "
                     f"--max-num-seqs or --max-model-len.")
