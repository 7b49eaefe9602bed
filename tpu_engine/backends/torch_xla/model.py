"""Llama / Qwen2 decoder: pure tensor math over a static KV cache.

Parameter names match HF checkpoints (`model.layers.0.self_attn.q_proj.weight`, ...), so a
safetensors state dict loads by name. Nothing here knows about XLA: the runner passes the
device tensors and an optional `scope(name)` context factory used to label each module.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig

Scope = Callable[[str], ContextManager]


def _no_scope(name: str) -> ContextManager:
    return contextlib.nullcontext()


class Linear(nn.Module):
    """y = x W^T + b, with W stored transposed as `weight_t` (in, out): XLA:CPU runs a plain
    (M, K) x (K, N) dot several times faster than one whose right operand is transposed."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, as the reference does, then scale in the model dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, heads, D); cos/sin: (B, T, 1, D). Rotate-half convention, as HF Llama.
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = Linear(h, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, write_index, key_mask, cache_len, kv_len):
        """x: (B, T, hidden). Caches are (S*cache_len + 1, KV, D); the new k/v of token (b, t) go
        to row write_index[b*T + t], in place. With `kv_len` None (prefill) attention runs
        over the fresh k/v; otherwise over the first `kv_len` cache positions of slots [0, B).
        key_mask: (B, T, Tk) bool, True where a query may attend to a key."""
        B, T, _ = x.shape
        D = self.head_dim
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, D), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, self.n_kv, D), cos, sin)
        v = self.v_proj(x).view(B, T, self.n_kv, D)
        # Row-indexed in-place update: XLA aliases the cache buffer instead of copying it.
        k_cache.index_copy_(0, write_index, k.reshape(B * T, self.n_kv, D))
        v_cache.index_copy_(0, write_index, v.reshape(B * T, self.n_kv, D))
        if kv_len is not None:  # slots [0, B) of the cache (its last row is the padding's scratch row)
            k = k_cache[:B * cache_len].view(B, cache_len, self.n_kv, D)[:, :kv_len]
            v = v_cache[:B * cache_len].view(B, cache_len, self.n_kv, D)[:, :kv_len]
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, KV, Tk, D)
        G = self.n_heads // self.n_kv
        # Grouped-query attention without repeating k/v: each KV head's G query heads are
        # stacked along the query axis, so both matmuls are plain batched (B, KV) products.
        qg = q.view(B, T, self.n_kv, G, D).permute(0, 2, 3, 1, 4).reshape(B, self.n_kv, G * T, D)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, KV, G*T, Tk)
        scores = scores.view(B, self.n_kv, G, T, -1).float().masked_fill(~key_mask[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype).view(B, self.n_kv, G * T, -1)
        out = torch.matmul(probs, v).view(B, self.n_kv, G, T, D)
        out = out.permute(0, 3, 1, 2, 4).reshape(B, T, self.n_heads * D)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(h, i, bias=False)
        self.up_proj = Linear(h, i, bias=False)
        self.down_proj = Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """Decoder-only LM in two parts: `hidden` (embeddings and decoder layers, the per-shape
    graph) and `logits` (final norm and LM head, for the few rows that sample a token)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Transformer(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.scope: Scope = _no_scope

    def hidden(self, tokens, positions, kv_caches, write_index, key_mask, cache_len: int,
               kv_len: int | None, inv_freq, scope: Scope | None = None):
        """tokens, positions: (B, T) int; kv_caches: [(k, v)] per layer, each (S*L + 1, KV, D).
        Returns the last layer's output (B, T, hidden), before the final norm."""
        scope = scope or self.scope
        with scope("model.embed_tokens"):
            x = self.model.embed_tokens(tokens)
        with scope("model.rotary_emb"):
            freqs = positions.unsqueeze(-1).float() * inv_freq  # (B, T, D/2)
            emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # (B, T, 1, D)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for i, layer in enumerate(self.model.layers):
            k_cache, v_cache = kv_caches[i]
            with scope(f"model.layers.{i}.input_layernorm"):
                h = layer.input_layernorm(x)
            with scope(f"model.layers.{i}.self_attn"):
                x = x + layer.self_attn(h, cos, sin, k_cache, v_cache, write_index, key_mask,
                                        cache_len, kv_len)
            with scope(f"model.layers.{i}.post_attention_layernorm"):
                h = layer.post_attention_layernorm(x)
            with scope(f"model.layers.{i}.mlp"):
                x = x + layer.mlp(h)
        return x

    def logits(self, x: torch.Tensor, scope: Scope | None = None) -> torch.Tensor:
        """x: (N, hidden) rows that sample a token -> (N, vocab) float32."""
        scope = scope or self.scope
        with scope("model.norm"):
            x = self.model.norm(x)
        with scope("lm_head"):
            return self.lm_head(x).float()
