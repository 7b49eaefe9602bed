"""The JAX step functions, jitted once per runner: one XLA executable per static shape.

  prefill_forward  per token bucket T: the waiting prompts packed into one (T,) buffer, each
                   token with its position, sequence index (-1: padding) and KV-cache row;
                   attention is causal within a prompt and never crosses prompts.
  gather_rows      per (T, request bucket): each prompt's last token's hidden state.
  decode_forward   per (slot bucket B, KV span): one token for each slot [0, B).
  head_and_sample  per (request bucket, sampler variant): final norm, LM head, sampling.
  prompt_head      per token bucket T, only with enable_prompt_logprobs: each packed position's
                   logprob of the next prompt token, its rank and the top alternatives.
The KV cache is donated to prefill and decode, so XLA updates it in place; every input that
changes between calls is a device array, and the only static arguments are bucket sizes and
the sampler variant. Function names are the torch runner's, so captures of both backends
name the same programs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ...config import ModelConfig
from . import model
from .sampler import apply_penalties, sample


def _prefill_forward(cfg: ModelConfig, constrain, params, ints, kv_caches, penalty_state, inv_freq,
                     cache_len: int):
    """ints (4, T) int32: token, position, sequence index, cache row. Returns (hidden (T, H),
    updated caches, the penalty state with each prefilled slot's counts zeroed and its prompt's
    tokens marked; padding goes to the scratch slot)."""
    tokens, pos, seq, rows = ints[0], ints[1], ints[2], ints[3]
    mask = (seq[None, :] == seq[:, None]) & (pos[None, :] <= pos[:, None])  # (Tq, Tk)
    x, caches = model.hidden(cfg, params, tokens[None], pos[None], kv_caches, rows, mask[None],
                             cache_len, None, inv_freq)
    with jax.named_scope("sampler"):  # the penalties' bookkeeping: each prefilled slot starts afresh
        counts, in_prompt = penalty_state
        slot = rows // cache_len
        counts = counts.at[slot].set(0)
        in_prompt = in_prompt.at[slot].set(False).at[slot, tokens].set(True)
    return x[0], constrain(caches), (counts, in_prompt)


def _decode_forward(cfg: ModelConfig, constrain, params, ints, kv_caches, inv_freq, span: int, cache_len: int):
    """ints (2, B) int32: each slot's last token and its position. Returns (hidden (B, H),
    updated caches)."""
    tokens, position = ints[0], ints[1]
    B = tokens.shape[0]
    write_index = jnp.arange(B, dtype=jnp.int32) * cache_len + position
    key_mask = jnp.arange(span)[None, :] <= position[:, None]
    x, caches = model.hidden(cfg, params, tokens[:, None], position[:, None], kv_caches, write_index,
                             key_mask[:, None], cache_len, span, inv_freq)
    return x[:, 0], constrain(caches)


def gather_rows(hidden, last):
    return hidden[last]


def _head_and_sample(cfg: ModelConfig, params, hidden, floats, ints, counters, penalty_state, random: bool,
                     num_logprobs: int):
    """floats (N, 5) [temperature, top_p, presence, frequency, repetition]; ints (N, 2) uint32
    [top_k, seed]; counters (2, N) uint32 [sampler counter, slot]. Returns the sampler's outputs
    and the penalty state with each row's sampled token counted in its slot."""
    counts, in_prompt = penalty_state
    slots = counters[1].astype(jnp.int32)
    raw = model.logits(cfg, params, hidden)
    with jax.named_scope("sampler"):
        logits = apply_penalties(raw, counts[slots], in_prompt[slots], floats[:, 2], floats[:, 3], floats[:, 4])
        out = sample(logits, floats[:, 0], ints[:, 0].astype(jnp.int32), floats[:, 1], ints[:, 1],
                     counters[0], random=random, num_logprobs=num_logprobs, raw_logits=raw)
        counts = counts.at[slots, out[0]].add(1)
    return out, (counts, in_prompt)


def _prompt_head(cfg: ModelConfig, params, hidden, next_tokens, num_logprobs: int):
    logprobs = jax.nn.log_softmax(model.logits(cfg, params, hidden), axis=-1)
    with jax.named_scope("prompt_logprobs"):
        lp = jnp.take_along_axis(logprobs, next_tokens[:, None], axis=-1)[:, 0]
        rank = jnp.sum(logprobs > lp[:, None], axis=-1) + 1
        top_lp, top_ids = jax.lax.top_k(logprobs, num_logprobs)
    return lp, rank, top_ids, top_lp


def compile_steps(cfg: ModelConfig, constrain=lambda caches: caches):
    """The four jitted functions for one model; `constrain` pins the updated caches' sharding
    (tensor parallel) so the donated buffers come back laid out as they went in."""
    def prefill_forward(params, ints, kv_caches, penalty_state, inv_freq, cache_len):
        return _prefill_forward(cfg, constrain, params, ints, kv_caches, penalty_state, inv_freq, cache_len)

    def decode_forward(params, ints, kv_caches, inv_freq, span, cache_len):
        return _decode_forward(cfg, constrain, params, ints, kv_caches, inv_freq, span, cache_len)

    def head_and_sample(params, hidden, floats, ints, counters, penalty_state, random, num_logprobs):
        return _head_and_sample(cfg, params, hidden, floats, ints, counters, penalty_state, random, num_logprobs)

    def prompt_head(params, hidden, next_tokens, num_logprobs):
        return _prompt_head(cfg, params, hidden, next_tokens, num_logprobs)

    return (jax.jit(prefill_forward, donate_argnums=(2, 3), static_argnames=("cache_len",)),
            jax.jit(gather_rows),
            jax.jit(decode_forward, donate_argnums=(2,), static_argnames=("span", "cache_len")),
            jax.jit(head_and_sample, donate_argnums=(5,), static_argnames=("random", "num_logprobs")),
            jax.jit(prompt_head, static_argnames=("num_logprobs",)))
