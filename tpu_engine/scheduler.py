"""Which requests the next engine step runs: the scheduling policy, free of any model or device.

Policy (vLLM's prefill-first scheduling, without chunked prefill):
  * while requests wait and a decode slot is free, the step is one prefill of every waiting
    request that fits, in arrival order: one per free slot, their prompts packed into one
    token buffer of at most `max_prefill_tokens`;
  * otherwise the step decodes every occupied slot, one token each, in slot order.
`plan_shapes` replays the same policy on lengths alone, so a run that knows its requests
(a profiling run) warms up exactly the shapes it will use and nothing else.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Generic, Protocol, Sequence, TypeVar

from .buckets import Buckets


class _Schedulable(Protocol):
    prompt: Sequence[int]


R = TypeVar("R", bound=_Schedulable)


@dataclasses.dataclass
class Prefill(Generic[R]):
    requests: list[R]
    slots: list[int]       # the free slot each request takes, in the same order


@dataclasses.dataclass
class Decode(Generic[R]):
    requests: list[R]      # every occupied slot, in slot order


class Scheduler(Generic[R]):
    def __init__(self, max_num_seqs: int, max_prefill_tokens: int):
        self.waiting: collections.deque[R] = collections.deque()
        self.slots: list[R | None] = [None] * max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens

    def next_step(self) -> Prefill[R] | Decode[R] | None:
        free = [i for i, r in enumerate(self.slots) if r is None]
        if self.waiting and free:
            picked: list[R] = []
            tokens = 0
            for req in self.waiting:  # arrival order; stop at the first that does not fit
                if len(picked) == len(free) or tokens + len(req.prompt) > self.max_prefill_tokens:
                    break
                picked.append(req)
                tokens += len(req.prompt)
            for _ in picked:
                self.waiting.popleft()
            return Prefill(picked, free[:len(picked)])
        running = [r for r in self.slots if r is not None]
        return Decode(running) if running else None

    def num_running(self) -> int:
        return sum(r is not None for r in self.slots)


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    """The compiled shapes a set of requests will use: prefill (token bucket, request bucket)
    and decode (slot bucket, KV-span bucket)."""
    prefill: tuple[tuple[int, int], ...]
    decode: tuple[tuple[int, int], ...]


@dataclasses.dataclass
class _Sim:
    prompt: range
    max_tokens: int
    slot: int = -1
    generated: int = 0


def plan_shapes(buckets: Buckets, max_num_seqs: int, max_prefill_tokens: int,
                requests: Sequence[tuple[int, int]]) -> ShapePlan:
    """Run the policy on (prompt length, max_tokens) pairs, as if no request stopped early
    (EOS ignored), and collect the shapes its steps use."""
    sched: Scheduler[_Sim] = Scheduler(max_num_seqs, max_prefill_tokens)
    sched.waiting.extend(_Sim(range(n), m) for n, m in requests)
    prefill, decode = set(), set()
    while (step := sched.next_step()) is not None:
        if isinstance(step, Prefill):
            prefill.add(buckets.prefill_batch_shape([len(r.prompt) for r in step.requests]))
            for r, slot in zip(step.requests, step.slots):
                r.slot, sched.slots[slot] = slot, r
            done = step.requests
        else:
            positions = [len(r.prompt) + r.generated - 1 for r in step.requests]
            decode.add(buckets.decode_shape([r.slot for r in step.requests], positions))
            done = step.requests
        for r in done:
            r.generated += 1
            if r.generated >= r.max_tokens:
                sched.slots[r.slot] = None
    return ShapePlan(tuple(sorted(prefill)), tuple(sorted(decode)))


@dataclasses.dataclass(frozen=True)
class ExpectedRequests:
    """The requests a run will send, when it knows them (a profiling run): warm-up then
    compiles only the shapes these use; anything else compiles on first use (and the compile
    guard reports it)."""
    lengths: tuple[tuple[int, int], ...]   # (prompt tokens, max_tokens) of each request
    random: bool = False                   # some request samples (temperature > 0)
    logprobs: bool = False                 # some request asks for logprobs
