"""Machine peaks measured on the spot, and the work one prefill or decode step must do."""
from __future__ import annotations

import time

import torch

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
    x = torch.ones(nbytes // 4)
    return nbytes / _best_of(lambda: x.sum(), reps)


def measure_matmul(n: int = 2048, reps: int = 5) -> float:
    """Float32 matmul throughput (FLOP/s) of torch's CPU BLAS on all cores."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _best_of(lambda: a @ b, reps)


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
