"""On-device sampling in JAX, with the torch sampler's semantics (sampler.py) and its noise.

Greedy, temperature, top-k then top-p on the renormalised top-k distribution, per-row
parameters as arrays (one compiled graph serves any mix of requests), and the same
counter-based hash of (seed, position, token id): the lanes are uint32, whose wrap-around is
the torch version's int64 arithmetic masked to 32 bits, so a seeded request draws the same
uniforms on both backends.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _hash32(x):
    # "lowbias32" integer hash (Chris Wellons), as the torch sampler.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seeds, counters, n: int):
    """(B, n) float32 in (0, 1), a pure function of (seed, counter, column); uint32 inputs."""
    col = jnp.arange(n, dtype=jnp.uint32)
    h = _hash32(seeds[:, None] * jnp.uint32(0x9E3779B1) + _hash32(counters[:, None] + jnp.uint32(0x632BE5AB)))
    h = _hash32(h ^ (col[None, :] * jnp.uint32(0x85EBCA77)))
    return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def apply_penalties(logits, counts, in_prompt, presence, frequency, repetition):
    """vLLM's penalties, as the torch sampler's apply_penalties: repetition on every token seen
    in the prompt or output, then frequency x output count and presence per output token seen."""
    out_seen = counts > 0
    rep = repetition[:, None]
    logits = jnp.where(in_prompt | out_seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - frequency[:, None] * counts.astype(logits.dtype) - presence[:, None] * out_seen.astype(logits.dtype)


def sample(logits, temperature, top_k, top_p, seeds, counters, random: bool, num_logprobs: int, raw_logits=None):
    """logits (B, V) float32; temperature, top_p (B,) float32; top_k (B,) int32 (V = off);
    seeds, counters (B,) uint32. Rows with temperature 0 are greedy. Returns (tokens (B,),
    their logprobs (B,), and with num_logprobs n > 0: (top ids (B, n), top logprobs (B, n),
    the chosen tokens' ranks (B,))); logprobs of the unmodified model distribution (`raw_logits`,
    before penalties, when given)."""
    logprobs = jax.nn.log_softmax(logits if raw_logits is None else raw_logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if random:
        temp = jnp.where(temperature > 0, temperature, 1.0)
        scaled = logits / temp[:, None]
        sorted_ids = jnp.argsort(-scaled, axis=-1)  # one sort: top-k and top-p cut on its order
        sorted_logits = jnp.take_along_axis(scaled, sorted_ids, axis=-1)
        rank = jnp.arange(logits.shape[1])[None, :]
        in_k = rank < top_k[:, None]
        probs = jax.nn.softmax(jnp.where(in_k, sorted_logits, -jnp.inf), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each rank
        probs = jnp.where(in_k & (before < top_p[:, None]), probs, 0.0)
        # Exponential race: argmax(p / E), E ~ Exp(1), draws from p.
        race = probs / -jnp.log(uniform_noise(seeds, counters, logits.shape[1]))
        pick = jnp.argmax(race, axis=-1)
        picked = jnp.take_along_axis(sorted_ids, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
        tokens = jnp.where(temperature > 0, picked, greedy)
    else:
        tokens = greedy
    token_logprobs = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    if num_logprobs:
        top_lp, top_ids = jax.lax.top_k(logprobs, num_logprobs)
        ranks = jnp.sum(logprobs > token_logprobs[:, None], axis=-1) + 1
        return tokens, token_logprobs, (top_ids, top_lp, ranks)
    return tokens, token_logprobs, None
