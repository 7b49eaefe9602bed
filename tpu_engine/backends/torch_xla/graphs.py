"""The functions each step compiles, one XLA graph per static shape.

  prefill_forward  per token bucket T: every waiting prompt packed into one (1, T) buffer, each
                   token with its own position and KV-cache row; attention is causal within a
                   prompt and never crosses prompts. Returns the hidden states (T, hidden).
  gather_rows      per (T, request bucket): each prompt's last token's hidden state.
  decode_forward   per (slot bucket B, KV span): one token for each slot [0, B).
  head_and_sample  per (request bucket, sampler variant): final norm, LM head and sampling of
                   the gathered rows, shared by prefill and decode.
  prompt_head      per token bucket T, only with enable_prompt_logprobs: the LM head over every
                   packed position, each position's logprob of the next prompt token, its rank
                   and the top alternatives (prompt logprobs).
Padding tokens of a packed prefill form their own sequence (index -1) so that no real token
attends to them, and write their K/V into the cache's last row, which no slot owns.
"""
from __future__ import annotations

import torch

from .model import CausalLM
from .sampler import apply_penalties, count_tokens, reset_penalty_rows, sample


def donate_kv_cache(kv_caches) -> None:
    """Let XLA reuse the cache buffers for the updated cache. The lazy path aliases in-place
    updates by itself; a dynamo-captured graph needs the donation marked, or every step copies
    the whole cache (the call is part of the captured graph, so it holds on every replay)."""
    for k, v in kv_caches:
        torch.ops.xla.dynamo_set_buffer_donor_(k, True)
        torch.ops.xla.dynamo_set_buffer_donor_(v, True)


def prefill_forward(model: CausalLM, ints, kv_caches, inv_freq, T: int, cache_len: int, penalty_state=None):
    """ints: (4, T) = token, position, sequence index (-1: padding), KV-cache row, per packed
    token. Writes each prompt's K/V into its slot, and each slot's penalty state (its output
    counts zeroed, its prompt's tokens marked; padding goes to the scratch slot); returns the
    hidden states (T, hidden)."""
    donate_kv_cache(kv_caches)
    tokens, pos, seq, rows = ints[0], ints[1], ints[2], ints[3]
    if penalty_state is not None:
        donate_kv_cache([penalty_state])
        with model.scope("sampler"):
            reset_penalty_rows(*penalty_state, torch.div(rows, cache_len, rounding_mode="floor"), tokens)
    same_seq = seq.unsqueeze(0) == seq.unsqueeze(1)          # (Tq, Tk)
    causal = pos.unsqueeze(0) <= pos.unsqueeze(1)            # key position <= query position
    hidden = model.hidden(tokens.unsqueeze(0), pos.unsqueeze(0), kv_caches, rows,
                          (same_seq & causal).unsqueeze(0), cache_len, None, inv_freq)
    return hidden[0]


def gather_rows(hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """hidden (T, hidden), last (N,) indices -> (N, hidden)."""
    return hidden.index_select(0, last)


def decode_forward(model: CausalLM, ints, kv_caches, inv_freq, B: int, span: int, cache_len: int):
    """ints: (2, B) = last token and its position, per slot [0, B). Attends over `span`
    positions; returns the hidden state of each slot's new token (B, hidden)."""
    donate_kv_cache(kv_caches)
    tokens, position = ints[0].unsqueeze(1), ints[1]
    write_index = torch.arange(B, device=ints.device) * cache_len + position
    key_mask = torch.arange(span, device=ints.device).unsqueeze(0) <= position.unsqueeze(1)
    hidden = model.hidden(tokens, position.unsqueeze(1), kv_caches, write_index, key_mask.unsqueeze(1),
                          cache_len, span, inv_freq)
    return hidden[:, 0]


def head_and_sample(model: CausalLM, hidden, floats, ints, counters, penalty_state, random: bool,
                    num_logprobs: int):
    """hidden (N, hidden); floats (N, 5) [temperature, top_p, presence, frequency and repetition
    penalties]; ints (N, 2) [top_k, seed]; counters (2, N) [sampler counter, slot];
    penalty_state (counts (S+1, V), in_prompt (S+1, V)), each row's slot counted with the token it
    samples. `random` and `num_logprobs` pick the variant (one graph each)."""
    donate_kv_cache([penalty_state])
    counts, in_prompt = penalty_state
    slots = counters[1]
    raw = model.logits(hidden)
    with model.scope("sampler"):
        logits = apply_penalties(raw, counts, in_prompt, slots, floats[:, 2], floats[:, 3], floats[:, 4])
        out = sample(logits, floats[:, 0], ints[:, 0], floats[:, 1], ints[:, 1], counters[0],
                     random=random, num_logprobs=num_logprobs, raw_logits=raw)
        count_tokens(counts, slots, out[0])
    return out


def prompt_head(model: CausalLM, hidden, next_tokens, num_logprobs: int):
    """hidden (T, hidden), next_tokens (T,): for each position, the logprob of the token after
    it (T,), that token's rank (T,), and the top `num_logprobs` ids and logprobs (T, k)."""
    logprobs = torch.log_softmax(model.logits(hidden), dim=-1)
    with model.scope("prompt_logprobs"):
        lp = torch.gather(logprobs, 1, next_tokens.unsqueeze(1)).squeeze(1)
        rank = (logprobs > lp.unsqueeze(1)).sum(-1) + 1
        top_lp, top_ids = torch.topk(logprobs, num_logprobs, dim=-1)
    return lp, rank, top_ids, top_lp
