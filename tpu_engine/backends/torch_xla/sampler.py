"""On-device sampling: greedy, temperature, top-k, top-p, seeded; no host sync.

Every sampling parameter is a per-row tensor, so one compiled graph serves any mix of
requests. Randomness comes from a counter-based hash of (seed, position, token id): a request
with a seed gets the same tokens whatever else shares its batch.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    # "lowbias32" integer hash (Chris Wellons), on int64 lanes masked to 32 bits.
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) floats in (0, 1), a pure function of (seed, counter, column)."""
    col = torch.arange(n, device=seeds.device, dtype=torch.int64)
    h = _hash32(seeds.unsqueeze(1) * 0x9E3779B1 + _hash32(counters.unsqueeze(1) + 0x632BE5AB))
    h = _hash32(h ^ (col.unsqueeze(0) * 0x85EBCA77))
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, in_prompt: torch.Tensor, slots: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """vLLM's penalties from each row's token counts: repetition on every token seen in the
    prompt or the output (a positive logit divided by it, a negative one multiplied), then
    frequency times the output count and presence once per output token seen. logits (B, V);
    counts (S+1, V) int and in_prompt (S+1, V) bool, read at each row's slot (B,); the penalties
    (B,). Neutral values change nothing."""
    counts, in_prompt = counts.index_select(0, slots), in_prompt.index_select(0, slots)
    out_seen = counts > 0
    rep = repetition.unsqueeze(1)
    logits = torch.where(in_prompt | out_seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - frequency.unsqueeze(1) * counts.to(logits.dtype) - presence.unsqueeze(1) * out_seen.to(logits.dtype)


def reset_penalty_rows(counts: torch.Tensor, in_prompt: torch.Tensor, slots: torch.Tensor,
                       tokens: torch.Tensor) -> None:
    """A prefill's slots start afresh: no output counts, their prompt's tokens marked (in place;
    here, in the sampler's file, so compiled captures scope it as the sampler)."""
    counts.index_fill_(0, slots, 0)
    in_prompt.index_fill_(0, slots, False)
    in_prompt.index_put_((slots, tokens), torch.ones_like(tokens, dtype=torch.bool))


def count_tokens(counts: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> None:
    """Each row's sampled token counted in its slot (in place)."""
    counts.index_put_((slots, tokens), torch.ones_like(slots, dtype=counts.dtype), accumulate=True)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor,
           random: bool, num_logprobs: int, raw_logits: torch.Tensor | None = None):
    """logits: (B, V) float32. temperature/top_p: (B,) float; top_k: (B,) int (V = off);
    seeds/counters: (B,) int64. Rows with temperature 0 are greedy.

    Returns (token ids (B,), their logprobs (B,), and with num_logprobs = n > 0: top ids (B, n),
    top logprobs (B, n), the chosen tokens' ranks (B,)); logprobs are of the unmodified model
    distribution (`raw_logits`, before penalties, when given), as vLLM reports."""
    logprobs = torch.log_softmax(logits if raw_logits is None else raw_logits, dim=-1)
    greedy = torch.argmax(logits, dim=-1)
    if random:
        # Sort once; top-k and top-p are both cut-offs on the sorted order.
        temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        sorted_logits, sorted_ids = torch.sort(logits / temp.unsqueeze(1), dim=-1, descending=True)
        rank = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
        # top-k first, then top-p on the renormalised top-k distribution (as vLLM and HF).
        in_k = rank < top_k.unsqueeze(1)
        probs = torch.softmax(sorted_logits.masked_fill(~in_k, float("-inf")), dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each rank
        keep = in_k & (before < top_p.unsqueeze(1))
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p (no multinomial).
        race = probs / -torch.log(uniform_noise(seeds, counters, logits.shape[1]))
        picked = torch.gather(sorted_ids, 1, torch.argmax(race, dim=-1, keepdim=True)).squeeze(1)
        tokens = torch.where(temperature > 0, picked, greedy)
    else:
        tokens = greedy
    token_logprobs = torch.gather(logprobs, 1, tokens.unsqueeze(1)).squeeze(1)
    if num_logprobs:
        top_lp, top_ids = torch.topk(logprobs, num_logprobs, dim=-1)
        rank = (logprobs > token_logprobs.unsqueeze(1)).sum(-1) + 1
        return tokens, token_logprobs, (top_ids, top_lp, rank)
    return tokens, token_logprobs, None
