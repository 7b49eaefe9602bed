"""Llama / Qwen2 decoder as pure JAX functions over a parameter pytree and a static KV cache.

The same architecture and numerics as the torch model (model.py): RMSNorm in float32, RoPE
(rotate-half, with Llama-3.1 scaling), grouped-query attention without repeating K/V, SwiGLU,
Qwen2's q/k/v biases, tied embeddings. Every module runs inside `jax.named_scope` with the
torch module's name (`model.layers.3.self_attn`), which reaches the HLO op metadata with no
flag, so layer tables of any capture need neither an env var nor an eager mode.

Parameters (projection weights stored (in, out), as the torch runner keeps them):
  {"embed": (V, H), "norm": (H,), "lm_head": (H, V),
   "layers": [{"input_layernorm", "q", "k", "v", "o", "q_bias"?, "k_bias"?, "v_bias"?,
               "post_attention_layernorm", "gate", "up", "down"}, ...]}
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

import jax
import jax.numpy as jnp

from ...config import ModelConfig

Params = dict


def build_params(cfg: ModelConfig, tensors: Iterator[tuple[str, np.ndarray]], place) -> Params:
    """HF-named host arrays -> the parameter pytree; `place(path, array)` casts, moves and
    shards one array (one host array is alive at a time)."""
    params: Params = {"layers": [dict() for _ in range(cfg.num_hidden_layers)]}
    for name, array in tensors:
        if name == "model.embed_tokens.weight":
            params["embed"] = place("embed", array)
            if cfg.tie_word_embeddings:  # a transposed copy: the logits matmul takes (H, V)
                params["lm_head"] = place("lm_head", np.ascontiguousarray(array.T))
        elif name == "model.norm.weight":
            params["norm"] = place("norm", array)
        elif name == "lm_head.weight":
            params["lm_head"] = place("lm_head", np.ascontiguousarray(array.T))
        else:
            _, _, index, module, *rest = name.split(".")
            key = _layer_key(module, rest)
            if rest[-1] == "weight" and rest[0].endswith("_proj"):
                array = np.ascontiguousarray(array.T)
            params["layers"][int(index)][key] = place(key, array)
    return params


def _layer_key(module: str, rest: list[str]) -> str:
    """('self_attn', ['q_proj', 'bias']) -> 'q_bias'; ('mlp', ['gate_proj', 'weight']) -> 'gate'."""
    if module.endswith("layernorm"):
        return module
    short = rest[0].removesuffix("_proj")
    return short + "_bias" if rest[-1] == "bias" else short


def rms_norm(x, weight, eps: float):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def rope_tables(positions, inv_freq, dtype):
    """positions (B, T) -> cos, sin (B, T, 1, D)."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def attention(cfg: ModelConfig, p, x, cos, sin, cache, write_index, key_mask, cache_len, kv_len):
    """x (B, T, H); cache (k, v), each (S*cache_len + 1, KV, D). New K/V of token (b, t) go to
    row write_index[b*T + t]. With kv_len None (prefill) attention runs over the fresh K/V,
    otherwise over the first kv_len positions of slots [0, B). key_mask (B, T, Tk).
    Returns (output (B, T, H), updated cache)."""
    B, T, _ = x.shape
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def proj(name, heads):
        y = x @ p[name]
        if name + "_bias" in p:
            y = y + p[name + "_bias"]
        return y.reshape(B, T, heads, D)

    q = apply_rope(proj("q", nh), cos, sin)
    k = apply_rope(proj("k", nkv), cos, sin)
    v = proj("v", nkv)
    k_cache = cache[0].at[write_index].set(k.reshape(B * T, nkv, D))
    v_cache = cache[1].at[write_index].set(v.reshape(B * T, nkv, D))
    if kv_len is not None:  # slots [0, B) of the cache (its last row is the padding's scratch row)
        k = k_cache[:B * cache_len].reshape(B, cache_len, nkv, D)[:, :kv_len]
        v = v_cache[:B * cache_len].reshape(B, cache_len, nkv, D)[:, :kv_len]
    G = nh // nkv
    qg = q.reshape(B, T, nkv, G, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k) * (1.0 / math.sqrt(D))
    scores = jnp.where(key_mask[:, None, None], scores.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, nh * D)
    return out @ p["o"], (k_cache, v_cache)


def mlp(p, x):
    return (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]


def hidden(cfg: ModelConfig, params: Params, tokens, positions, kv_caches, write_index, key_mask,
           cache_len: int, kv_len: int | None, inv_freq):
    """tokens, positions (B, T) -> (last layer's output (B, T, H), updated caches)."""
    with jax.named_scope("model.embed_tokens"):
        x = params["embed"][tokens]
    with jax.named_scope("model.rotary_emb"):
        cos, sin = rope_tables(positions, inv_freq, x.dtype)
    new_caches = []
    for i, p in enumerate(params["layers"]):
        name = f"model.layers.{i}"
        with jax.named_scope(f"{name}.input_layernorm"):
            h = rms_norm(x, p["input_layernorm"], cfg.rms_norm_eps)
        with jax.named_scope(f"{name}.self_attn"):
            out, cache = attention(cfg, p, h, cos, sin, kv_caches[i], write_index, key_mask,
                                   cache_len, kv_len)
            x = x + out
        new_caches.append(cache)
        with jax.named_scope(f"{name}.post_attention_layernorm"):
            h = rms_norm(x, p["post_attention_layernorm"], cfg.rms_norm_eps)
        with jax.named_scope(f"{name}.mlp"):
            x = x + mlp(p, h)
    return x, new_caches


def logits(cfg: ModelConfig, params: Params, x):
    """x (N, H) rows that sample a token -> (N, V) float32."""
    with jax.named_scope("model.norm"):
        x = rms_norm(x, params["norm"], cfg.rms_norm_eps)
    with jax.named_scope("lm_head"):
        return (x @ params["lm_head"]).astype(jnp.float32)
