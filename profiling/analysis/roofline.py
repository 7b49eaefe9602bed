"""The roofline: the work a prefill or decode step must do (FLOPs, bytes, from the model's
config) against the time the capture's steps took and the machine's peaks recorded with the run
(`capture/peaks.py`)."""
from __future__ import annotations

import dataclasses

from tpu_engine.config import ModelConfig

from ..runs.parts import Peaks
from .analysis import Analysis


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


@dataclasses.dataclass(frozen=True)
class Achieved:
    work: float                  # prefill: FLOPs; decode: bytes read
    seconds: float
    per_s: float
    pct_of_peak: float | None    # None when the peak is not known


@dataclasses.dataclass(frozen=True)
class Roofline:
    peaks: Peaks | None
    prefill: Achieved | None = None
    decode: Achieved | None = None


def _achieved(work: float, seconds: float, peak: float | None) -> Achieved:
    per_s = work / seconds
    return Achieved(work, seconds, per_s, 100 * per_s / peak if peak else None)


def roofline(a: Analysis) -> Roofline | None:
    """Achieved FLOP/s (prefill) and bytes/s (decode) against the recorded peaks; None without
    a run record (the model's shape is unknown)."""
    rec = a.record
    if rec is None or rec.model_config is None:
        return None
    cfg, peaks = rec.model_config, rec.peaks
    dtype_bytes = 2 if rec.engine and rec.engine.device.dtype == "bfloat16" else 4
    out = Roofline(peaks)
    pre = [s for s in a.phase_steps("prefill") if s.record]
    if pre:
        flops = sum(prefill_flops(cfg, s.record.num_tokens) for s in pre)
        out = dataclasses.replace(out, prefill=_achieved(flops, sum(s.duration_s for s in pre),
                                                         peaks.flops_per_s if peaks else None))
    dec = [s for s in a.phase_steps("decode") if s.record]
    if dec:
        # The manifest keeps each step's min and max context; their mean stands in for the rest
        # (one total, not a list per sequence: a damaged manifest's batch size may be huge).
        nbytes = sum(decode_bytes(cfg, [(s.record.kv_len_min + s.record.kv_len_max) / 2 * s.record.batch_size],
                                  dtype_bytes) for s in dec)
        out = dataclasses.replace(out, decode=_achieved(nbytes, sum(s.duration_s for s in dec),
                                                        peaks.bytes_per_s if peaks else None))
    return out
