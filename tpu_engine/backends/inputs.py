"""A step's inputs as the host builds them, the same for every backend: the packed-prefill
buffer, the rows of a prefill and of a decode, and the sampling parameters (cached per batch
composition). Each backend copies the results to its devices."""
from __future__ import annotations

from typing import Callable, Sequence

from ..sampling import GREEDY, SamplingRow


def pack_prompts(slots, prompts, T: int, cache_len: int, scratch_row: int) -> list[list[int]]:
    """The (4, T) rows prefill_forward reads, built on the host."""
    tokens, pos, seq, rows = [], [], [], []
    for i, (slot, prompt) in enumerate(zip(slots, prompts)):
        n = len(prompt)
        tokens += prompt
        pos += range(n)
        seq += [i] * n
        rows += range(slot * cache_len, slot * cache_len + n)
    pad = T - len(tokens)
    return [tokens + [0] * pad, pos + [0] * pad, seq + [-1] * pad, rows + [scratch_row] * pad]


def next_prompt_tokens(prompts, T: int) -> list[int]:
    """For the packed buffer: the prompt token after each position (0 after a prompt's last
    token, and on padding), what a prompt-logprobs head scores."""
    out = []
    for p in prompts:
        out += list(p[1:]) + [0]
    return out + [0] * (T - len(out))


class SamplingInputs:
    """Per-row sampling parameters as two device arrays, (n, 5) float [temperature, top_p,
    presence, frequency and repetition penalties] and (n, 2) int [top_k (vocab = off), seed],
    padded to n rows with greedy ones. Cached per batch
    composition, which changes rarely; `place(floats, ints)` builds the backend's arrays."""

    def __init__(self, vocab_size: int, place: Callable[[list, list], tuple]):
        self.vocab, self.place = vocab_size, place
        self._cache: dict[tuple, tuple] = {}

    def __call__(self, rows: Sequence[SamplingRow], n: int) -> tuple:
        key = (n, tuple(rows))
        hit = self._cache.get(key)
        if hit is None:
            full = list(rows) + [GREEDY] * (n - len(rows))
            hit = self.place([[r.temperature, r.top_p, r.presence_penalty, r.frequency_penalty,
                               r.repetition_penalty] for r in full],
                             [[r.top_k if r.top_k > 0 else self.vocab, r.seed] for r in full])
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = hit
        return hit


def prefill_rows(lens: Sequence[int], n: int) -> tuple[list[int], list[int]]:
    """For prompts of `lens` packed into one buffer and a request bucket of n rows: the index of
    each prompt's last token (padding rows read token 0), and each row's sampler counter, the
    prompt length as for a prompt prefilled alone (so a seeded request samples the same tokens
    whatever it was packed with)."""
    ends = [sum(lens[:i + 1]) for i in range(len(lens))] + [1] * (n - len(lens))
    return [e - 1 for e in ends], list(lens) + [1] * (n - len(lens))


def decode_rows(B: int, slots: Sequence[int], last_tokens: Sequence[int], positions: Sequence[int],
                sampling: Sequence[SamplingRow]) -> tuple[list[int], list[int], list[SamplingRow], list[int]]:
    """A decode over slots [0, B): each slot's input token, its position, its sampling row
    (idle slots greedy) and its sampler counter (the position of the token it samples)."""
    tok, pos, rows = [0] * B, [0] * B, [GREEDY] * B
    for s, t, p, r in zip(slots, last_tokens, positions, sampling):
        tok[s], pos[s], rows[s] = t, p, r
    return tok, pos, rows, [p + 1 for p in pos]
