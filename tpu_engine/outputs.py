"""The vLLM-shaped request inputs and outputs of the offline API."""
from __future__ import annotations

import dataclasses

from .sampler import MAX_LOGPROBS


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

    def __post_init__(self):
        checks = [
            (isinstance(self.temperature, (int, float)) and self.temperature >= 0,
             f"temperature {self.temperature!r} must be a number >= 0"),
            (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1,
             f"top_p {self.top_p!r} must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= -1, f"top_k {self.top_k!r} must be -1, 0 or a positive integer"),
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1,
             f"max_tokens {self.max_tokens!r} must be an integer >= 1"),
            (self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"logprobs {self.logprobs!r} must be None or an integer in [0, {MAX_LOGPROBS}]"),
            (self.seed is None or isinstance(self.seed, int), f"seed {self.seed!r} must be an integer"),
            (self.stop_token_ids is None or all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids {self.stop_token_ids!r} must be a list of token ids"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg + ".")


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
