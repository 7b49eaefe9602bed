"""What every backend's runner shares: a step's result record and host-memory hygiene.

A runner (the torch_xla one in runner.py, the JAX one in jax_backend/) owns weights, the KV
cache and the compiled graphs, and offers the engine one small interface:
  buckets, device_kind, dtype, cache_dir, guard              attributes
  warmup(plan, variants, progress) -> CompileStats
  prefill(slots, prompts, sampling) -> StepResult
  decode(slots, last_tokens, positions, sampling) -> StepResult
  step_scope(phase, step)   the profiler's step annotation around one engine step
  compile_stats(), weight_bytes(), kv_cache_bytes(), device_info()
Nothing here imports a backend.
"""
from __future__ import annotations

import ctypes
import dataclasses
from typing import Callable, Sequence

from .compile import CompileStats
from .sampler import SamplingRow


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): loading and compiling
    free a lot of short-lived memory, and the process's peak RSS should show what it keeps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclasses.dataclass
class StepResult:
    tokens: list[int]
    logprobs: list[float]
    top: list[tuple[int, list[tuple[int, float]]]] | None  # per row: chosen token's rank, (token, logprob) best first
    compiles: CompileStats
    prompt: list[list[PromptPosition]] | None = None  # per prompt: its positions 1.. (prefill, if asked)

    def select(self, rows: Sequence[int]) -> "StepResult":
        """These rows only (the real sequences of a padded batch)."""
        return StepResult([self.tokens[r] for r in rows], [self.logprobs[r] for r in rows],
                          [self.top[r] for r in rows] if self.top else None, self.compiles,
                          [self.prompt[r] for r in rows] if self.prompt else None)

    def first(self, n: int) -> "StepResult":
        return self.select(range(n))


@dataclasses.dataclass(frozen=True)
class PromptPosition:
    """A prompt token's logprob given the tokens before it, its rank, and the top alternatives."""
    logprob: float
    rank: int
    top: list[tuple[int, float]]


def read_prompt_logprobs(lp, rank, ids, lps, lens: Sequence[int]) -> list[list[PromptPosition]]:
    """prompt_head's outputs on the host, split per packed prompt: position i of a prompt
    predicts its token i + 1 (so a prompt of n tokens gets n - 1 entries)."""
    out, start = [], 0
    for n in lens:
        out.append([PromptPosition(float(lp[i]), int(rank[i]), list(zip(ids[i].tolist(), lps[i].tolist())))
                    for i in range(start, start + n - 1)])
        start += n
    return out


GREEDY = SamplingRow(0.0, 0, 1.0, 0, 0)  # what padded rows sample


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


def read_back(tokens, logprobs, top, rows: Sequence[SamplingRow], compiles: CompileStats) -> StepResult:
    """A StepResult from the sampler's outputs on the host (numpy arrays or CPU tensors); `top`
    is (ids (n, k), logprobs (n, k), ranks (n,)) or None; each row keeps the alternatives it
    asked for."""
    if top is not None:
        ids, lps, ranks = top
        top = [(int(ranks[r]), list(zip(ids[r, :row.num_logprobs].tolist(), lps[r, :row.num_logprobs].tolist())))
               for r, row in enumerate(rows)]
    return StepResult(tokens.tolist(), logprobs.tolist(), top, compiles)
