"""The vLLM-shaped request inputs and outputs of the offline API."""
from __future__ import annotations

import dataclasses
import sys

from .sampling import MAX_LOGPROBS


@dataclasses.dataclass
class SamplingParams:
    temperature: float = 1.0   # 0: greedy
    top_p: float = 1.0
    top_k: int = -1            # -1 or 0: all tokens
    max_tokens: int = 16
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; N: the chosen token plus the N most likely
    seed: int | None = None
    stop_token_ids: list[int] | None = None  # tokens that end the request as EOS does (kept in the output)
    presence_penalty: float = 0.0    # vLLM's penalties, applied on device from each slot's token counts
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    prompt_logprobs: int | None = None  # None: none; N: each prompt token's logprob plus the N most likely

    def __post_init__(self):
        # (holds, what is expected): a message is only written for a check that fails
        checks = [
            ("temperature", _real(self.temperature) and 0 <= self.temperature <= _FLOAT_MAX, "a finite number >= 0"),
            ("top_p", _real(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", _integer(self.top_k) and self.top_k >= -1, "-1, 0 or a positive integer"),
            ("max_tokens", _integer(self.max_tokens) and self.max_tokens >= 1, "an integer >= 1"),
            ("logprobs", self.logprobs is None or (_integer(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"None or an integer in [0, {MAX_LOGPROBS}]"),
            # the seed is hashed through str(), which refuses ints of over 4300 digits
            ("seed", self.seed is None or (_integer(self.seed) and abs(self.seed) < 10**4000),
             "an integer of at most 4000 digits"),
            ("stop_token_ids", self.stop_token_ids is None or (
                isinstance(self.stop_token_ids, (list, tuple))
                and all(_integer(t) and t >= 0 for t in self.stop_token_ids)), "a list of token ids"),
            ("presence_penalty", _real(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             "a number from -2 to 2"),
            ("frequency_penalty", _real(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             "a number from -2 to 2"),
            # > 0 as in vLLM, bounded so that a logit divided by it stays finite in float32
            ("repetition_penalty", _real(self.repetition_penalty) and 0.01 <= self.repetition_penalty <= 100,
             "a number from 0.01 to 100"),
            ("prompt_logprobs", self.prompt_logprobs is None or (
                _integer(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
             f"None or an integer in [0, {MAX_LOGPROBS}]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} {_show(getattr(self, name))} must be {expected}.")


_FLOAT_MAX = sys.float_info.max   # an int above it overflows float() on the engine thread


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    """repr cut short; an int too long to print is described instead."""
    if _integer(v) and abs(v) >= 10**40:
        return f"(an integer of {v.bit_length()} bits)"
    text = repr(v)
    return text if len(text) <= 60 else text[:60] + "…"


@dataclasses.dataclass(frozen=True)
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely


@dataclasses.dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None  # one dict per generated token
    finish_reason: str | None = None  # "length" or "stop"
    text: str = ""


@dataclasses.dataclass
class RequestMetrics:
    arrival_time: float                      # time.time() seconds
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    prompt: str | None = None
    # with SamplingParams.prompt_logprobs: None for the first prompt token, then per token its
    # logprob (and rank) and the most likely alternatives, as vLLM returns them
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


def prompt_entries(prompt: list[int], positions, k: int) -> list[dict[int, Logprob] | None]:
    """vLLM's prompt_logprobs from a runner's scored positions: None for the first token, then
    for each later token its own Logprob (with rank) and the k most likely alternatives."""
    out: list[dict[int, Logprob] | None] = [None]
    for token, pos in zip(prompt[1:], positions):
        entry = {token: Logprob(pos.logprob, pos.rank)}
        for r, (tid, lp) in enumerate(pos.top[:k], start=1):
            entry.setdefault(tid, Logprob(lp, r))
        out.append(entry)
    return out
