"""Roofline pieces: machine peaks (a TPU table, or measured on the spot on CPU) and the work
one prefill or decode step must do (FLOPs, bytes) from the model's config."""
from __future__ import annotations

import time

from tpu_engine.config import ModelConfig


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


def machine_peaks(platform: str, device_kind: str) -> dict:
    """Peaks for the roofline, with where they came from."""
    if platform == "TPU":
        found = tpu_peaks(device_kind)
        if found:
            return dict(flops_per_s=found[0], bytes_per_s=found[1], source=f"table ({device_kind})")
        return dict(flops_per_s=None, bytes_per_s=None, source=f"unknown TPU kind {device_kind!r}")
    return dict(flops_per_s=measure_matmul(), bytes_per_s=measure_bandwidth(),
                source="measured on this host (torch float32 matmul, sum over 512 MiB)")


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls for every token (all but the embedding table)."""
    embed = cfg.vocab_size * cfg.hidden_size
    return cfg.num_params() - embed + (embed if cfg.tie_word_embeddings else 0)


def prefill_flops(cfg: ModelConfig, n: int) -> float:
    """FLOPs of one causal prefill of n tokens: 2 per weight per token (lm_head on the last
    token only) plus attention's QK^T and PV over the causal triangle."""
    lm_head = cfg.vocab_size * cfg.hidden_size
    dense = 2 * (matmul_params(cfg) - lm_head) * n + 2 * lm_head
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * n * (n + 1) / 2
    return dense + attn


def decode_bytes(cfg: ModelConfig, kv_lens: list[int], dtype_bytes: int) -> float:
    """Bytes one decode step must read: every matmul weight once, plus each sequence's K and V."""
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * sum(kv_lens)
    return (matmul_params(cfg) + kv) * dtype_bytes
