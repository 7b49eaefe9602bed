"""Tensor parallelism with torch_xla SPMD: one mesh axis, 'model'.

Column-parallel q/k/v/gate/up (output features split), row-parallel o/down (input features
split), KV cache split on the KV-head axis. XLA inserts the collectives.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from ...config import ModelConfig

# name pattern -> partition spec over the tensor's dims ('model' = split, None = replicated).
# Projection weights are stored transposed, (in, out).
PARTITION_RULES = [
    (r"self_attn\.[qkv]_proj\.weight_t$", (None, "model")),
    (r"self_attn\.[qkv]_proj\.bias$", ("model",)),
    (r"self_attn\.o_proj\.weight_t$", ("model", None)),
    (r"mlp\.(gate|up)_proj\.weight_t$", (None, "model")),
    (r"mlp\.down_proj\.weight_t$", ("model", None)),
]


def check_tp(cfg: ModelConfig, tp: int, devices: int) -> None:
    if tp < 1:
        raise ValueError(f"tensor_parallel_size {tp} must be at least 1.")
    if tp > devices:
        raise ValueError(f"tensor_parallel_size {tp} exceeds the {devices} available device(s).")
    for what, n in (("attention heads", cfg.num_attention_heads),
                    ("key/value heads", cfg.num_key_value_heads),
                    ("MLP intermediate size", cfg.intermediate_size)):
        if n % tp:
            raise ValueError(f"tensor_parallel_size {tp} does not divide the model's {n} {what}.")


class TensorParallel:
    def __init__(self, tp: int):
        import torch_xla.distributed.spmd as xs
        self.xs = xs
        self.mesh = xs.Mesh(np.arange(tp), (tp,), ("model",))

    def shard_param(self, name: str, t: torch.Tensor) -> torch.Tensor:
        for pattern, spec in PARTITION_RULES:
            if re.search(pattern, name):
                self.xs.mark_sharding(t, self.mesh, spec)
                break
        return t

    def shard_kv(self, t: torch.Tensor) -> torch.Tensor:
        """t: a (S*L, KV, D) cache, split on the KV-head axis."""
        self.xs.mark_sharding(t, self.mesh, (None, "model", None))
        return t
