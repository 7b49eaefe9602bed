"""The batch a profile runs: random prompts and each request's output length.

Three schedules, as in vLLM's profiling examples:
  generate            every request generates `output_len` tokens;
  run_num_steps N     every request runs N engine steps (its prefill and N-1 decode steps),
                      so every decode step carries the full batch;
  run_to_completion K K requests finish per decode step: with a batch of 128 and K=32 the
                      decode steps carry 128, 96, 64, 32, 1 sequences.
As in vLLM, one engine prefill step takes every waiting request that fits (the decode slots,
max_num_batched_tokens), so a batch that fits starts with one prefill step.
"""
from __future__ import annotations

import numpy as np

from ..runs.parts import Workload


def plan(mode: str, batch_size: int, output_len: int, n: int | None) -> Workload:
    """The schedule as recorded: each request's output length and the decode batches it gives."""
    lengths = steps_per_request(mode, batch_size, output_len, n)
    return Workload(mode, lengths, decode_batch_sizes(lengths))


def random_prompts(batch_size: int, input_len: int, vocab_size: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab_size, 10000), size=(batch_size, input_len))
    return [{"prompt_token_ids": row} for row in ids.tolist()]


def steps_per_request(mode: str, batch_size: int, output_len: int, n: int | None) -> list[int]:
    """max_tokens for each request of the batch."""
    if mode == "generate":
        return [output_len] * batch_size
    if mode == "run_num_steps":
        return [n] * batch_size
    if mode != "run_to_completion":
        raise ValueError(f"unknown mode {mode!r}; expected generate, run_num_steps or run_to_completion.")
    # Sequences alive at each step: the full batch at prefill and the first decode step,
    # then K fewer per step, ending with a single sequence.
    alive = [batch_size, batch_size]
    while alive[-1] - n > 0:
        alive.append(alive[-1] - n)
    if alive[-1] != 1:
        alive.append(1)
    lengths = []
    for step, count in enumerate(alive):
        after = alive[step + 1] if step + 1 < len(alive) else 0
        lengths += [step + 1] * (count - after)   # these finish after step + 1 tokens
    return sorted(lengths, reverse=True)


def decode_batch_sizes(lengths: list[int]) -> list[int]:
    """Sequences in each decode step when every request prefills in the first step."""
    return [sum(1 for n in lengths if n > step) for step in range(1, max(lengths))]
