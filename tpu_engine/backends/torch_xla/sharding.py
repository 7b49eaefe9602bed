"""Tensor parallelism with torch_xla SPMD: one mesh axis, 'model'.

Column-parallel q/k/v/gate/up (output features split), row-parallel o/down (input features
split), KV cache split on the KV-head axis. XLA inserts the collectives.
"""
from __future__ import annotations

import re

import numpy as np
import torch

# name pattern -> partition spec over the tensor's dims ('model' = split, None = replicated).
# Projection weights are stored transposed, (in, out).
PARTITION_RULES = [
    (r"self_attn\.[qkv]_proj\.weight_t$", (None, "model")),
    (r"self_attn\.[qkv]_proj\.bias$", ("model",)),
    (r"self_attn\.o_proj\.weight_t$", ("model", None)),
    (r"mlp\.(gate|up)_proj\.weight_t$", (None, "model")),
    (r"mlp\.down_proj\.weight_t$", ("model", None)),
]


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
