"""The runner contract every backend meets, and the step flow all of them share.

A runner owns the weights, the KV cache and the compiled programs. The engine calls only
`prefill`, `decode`, `warmup`, `step_scope` and the facts below; those steps are written once
here (host-side inputs, padding rows, sampler read-back, the compile guard) and call the
backend's hooks, the methods marked abstract, for what differs: copying inputs to the device,
running the forward, gather and head programs, and reading the results back.

Attributes a backend sets in its `__init__`: cfg, buckets, device_kind, dtype, cache_dir,
guard, max_model_len, max_num_seqs, scratch_row (the KV row a packed prefill's padding
writes), sampling (a SamplingInputs). Nothing here imports a backend.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import time
from typing import Any, ContextManager, Sequence

from ..buckets import Buckets
from ..compile import CompileGuard, CompileStats
from ..config import ModelConfig
from ..info import DeviceInfo
from ..sampling import GREEDY, MAX_LOGPROBS, SamplingRow
from ..scheduler import ShapePlan
from ..warmup import run_warmup
from .inputs import SamplingInputs, decode_rows, next_prompt_tokens, pack_prompts, prefill_rows

log = logging.getLogger(__name__)


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
    """A prompt head's outputs on the host, split per packed prompt: position i of a prompt
    predicts its token i + 1 (so a prompt of n tokens gets n - 1 entries)."""
    out, start = [], 0
    for n in lens:
        out.append([PromptPosition(float(lp[i]), int(rank[i]), list(zip(ids[i].tolist(), lps[i].tolist())))
                    for i in range(start, start + n - 1)])
        start += n
    return out


def read_back(tokens, logprobs, top, rows: Sequence[SamplingRow], compiles: CompileStats) -> StepResult:
    """A StepResult from the sampler's outputs on the host (numpy arrays or CPU tensors); `top`
    is (ids (n, k), logprobs (n, k), ranks (n,)) or None; each row keeps the alternatives it
    asked for."""
    if top is not None:
        ids, lps, ranks = top
        top = [(int(ranks[r]), list(zip(ids[r, :row.num_logprobs].tolist(), lps[r, :row.num_logprobs].tolist())))
               for r, row in enumerate(rows)]
    return StepResult(tokens.tolist(), logprobs.tolist(), top, compiles)


class Runner(abc.ABC):
    cfg: ModelConfig
    buckets: Buckets
    device_kind: str          # "CPU", "TPU", "GPU"
    cache_dir: str | None
    guard: CompileGuard
    max_model_len: int
    max_num_seqs: int
    scratch_row: int
    sampling: SamplingInputs

    # ---- facts ------------------------------------------------------------------------------
    @abc.abstractmethod
    def compile_stats(self) -> CompileStats:
        """The backend's own compile counters, cumulative for the process."""

    @abc.abstractmethod
    def step_scope(self, phase: str, step: int) -> ContextManager:
        """The profiler's step annotation around one engine step."""

    @abc.abstractmethod
    def device_info(self) -> DeviceInfo: ...

    @abc.abstractmethod
    def weight_bytes(self) -> int: ...

    @abc.abstractmethod
    def kv_cache_bytes(self) -> int: ...

    # ---- hooks: the device side of a step ---------------------------------------------------
    @abc.abstractmethod
    def _ints(self, rows) -> Any:
        """Host integer rows (a list, or a list of lists) as a device array."""

    @abc.abstractmethod
    def _counters(self, values: list[int]) -> Any:
        """The sampler's per-row counters as a device array."""

    @abc.abstractmethod
    def _prefill_forward(self, ints, T: int) -> Any:
        """Run the packed (4, T) buffer through the model (KV written in place); hidden states."""

    @abc.abstractmethod
    def _gather(self, hidden, last) -> Any:
        """The rows `last` (a device array of indices) of `hidden`."""

    @abc.abstractmethod
    def _decode_forward(self, ints, B: int, span: int) -> Any:
        """One token for slots [0, B) over `span` KV positions; hidden states (B, hidden)."""

    @abc.abstractmethod
    def _head(self, hidden, floats, ints, counters, random: bool, num_logprobs: int) -> tuple:
        """Final norm, LM head, the penalties from each row's slot counts (`counters` is (2, n):
        the sampler counter and the slot of each row; the sampled tokens are counted in), and
        the sampler; (tokens, logprobs, top or None) on the host."""

    @abc.abstractmethod
    def _prompt_head(self, hidden, next_tokens, num_logprobs: int) -> tuple:
        """The LM head over every position of a prefill (enable_prompt_logprobs): each position's
        logprob of `next_tokens`, its rank, the top ids and logprobs, on the host."""

    # ---- the steps --------------------------------------------------------------------------
    def prefill(self, slots: Sequence[int], prompts: Sequence[Sequence[int]],
                sampling: Sequence[SamplingRow], prompt_logprobs: bool = False) -> StepResult:
        """Run the prompts, packed, into their slots and sample each one's first token; with
        `prompt_logprobs`, also score every prompt token (the prompt head of this T)."""
        lens = [len(p) for p in prompts]
        T, N = self.buckets.prefill_batch_shape(lens)
        before = self.compile_stats()
        ints = self._ints(pack_prompts(slots, [list(p) for p in prompts], T, self.max_model_len,
                                       self.scratch_row))  # one host->device copy
        hidden = self._prefill_forward(ints, T)
        scored = self._prompt_head(hidden, self._ints(next_prompt_tokens(prompts, T)), MAX_LOGPROBS) \
            if prompt_logprobs else None
        last, counters = prefill_rows(lens, N)
        hidden = self._gather(hidden, self._ints(last))  # each prompt's last token
        out = self._sample(hidden, list(sampling) + [GREEDY] * (N - len(lens)), counters,
                           list(slots) + [self.max_num_seqs] * (N - len(lens)), before,
                           f"prefill of {len(lens)} prompt(s), {sum(lens)} tokens")
        if scored is not None:
            out.prompt = read_prompt_logprobs(*scored, lens)
        return out.first(len(lens))

    def decode(self, slots: Sequence[int], last_tokens: Sequence[int], positions: Sequence[int],
               sampling: Sequence[SamplingRow]) -> StepResult:
        """One token for each active slot. positions[i]: where last_tokens[i] goes."""
        B, span = self.buckets.decode_shape(slots, positions)
        before = self.compile_stats()
        tok, pos, rows, counters = decode_rows(B, slots, last_tokens, positions, sampling)
        hidden = self._decode_forward(self._ints([tok, pos]), B, span)
        out = self._sample(hidden, rows, counters, list(range(B)), before, f"decode of batch {len(slots)}")
        return out.select(slots)

    def _sample(self, hidden, rows: Sequence[SamplingRow], counters: list[int], row_slots: list[int],
                before: CompileStats, what: str) -> StepResult:
        """Head and sampler over `hidden` (n, hidden_size), row i the sequence of slot
        `row_slots[i]` (the scratch slot for padding): one program per (n, variant), the same
        for prefill and decode; its outputs are the step's one read-back."""
        floats, ints = self.sampling(rows, len(counters))
        want = max(r.num_logprobs for r in rows)
        tokens, lps, top = self._head(hidden, floats, ints, self._counters([counters, row_slots]),
                                      any(r.temperature > 0 for r in rows), MAX_LOGPROBS if want else 0)
        return read_back(tokens, lps, top, rows, self.guard.check(before, what))

    def warmup(self, plan: ShapePlan, variants: Sequence[SamplingRow], progress=None,
               prompt_logprobs: bool = False) -> CompileStats:
        """Compile the plan's shapes, with inputs built as real ones are; then arm the guard."""
        t0 = time.perf_counter()
        run_warmup(self, plan, variants, progress, prompt_logprobs)
        self.guard.arm()
        log.info("warm-up compiled %d programs in %.1fs", self.guard.warmup.compiles, time.perf_counter() - t0)
        return self.guard.warmup
