"""The step-level engine: requests, decode slots, continuous batching, phase events.

Contract (one call of `step()` is one model step; the policy is scheduler.py's):
  add_request() queues a prompt  ->  a step prefills every waiting prompt that fits (free
  slots, max_num_batched_tokens), packed together, and samples each one's first token  ->
  later steps decode every occupied slot together, one token each  ->  a request that hits
  max_tokens (or EOS) frees its slot at once, and waiting requests may take it.
Prefill goes first whenever a slot is free, so waiting requests join the running batch early.
Nothing here imports torch_xla: the backend (`runner.py`) owns devices and graphs.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import random
import time
from typing import Any, Iterable, Sequence

from .backends import registry
from .compile import CompileStats
from .config import DEFAULT_MODEL
from .events import EventBus, PhaseEvent, SlotEvent, StepRecord
from .info import EngineInfo
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, SamplingParams, prompt_entries
from .sampling import SamplingRow
from .scheduler import Decode, ExpectedRequests, Prefill, Scheduler, ShapePlan, plan_shapes


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Every engine setting, made once where a run starts (a CLI's flags: `cli.engine_config`)."""
    model: str = DEFAULT_MODEL
    backend: str = registry.DEFAULT         # the runner that compiles and runs the model (backends/registry.py)
    dtype: str = "auto"
    max_model_len: int | None = None        # default: min(model's max positions, 2048)
    tensor_parallel_size: int = 1
    enforce_eager: bool = False             # lazy tracing per step instead of dynamo capture
    load_format: str = "auto"
    seed: int = 0
    max_num_seqs: int = 8                   # decode slots
    max_num_batched_tokens: int | None = None  # longest prefill; default max_model_len
    compilation_cache_dir: str | None = None   # default: on TPU ~/.cache/tpu_engine/xla_cache
    strict_compiles: bool = False           # raise RecompileError on a compile after warm-up
    expected: ExpectedRequests | None = None   # warm up only these requests' shapes (default: all)
    progress: bool = True                   # a progress bar on stderr while warm-up compiles
    enable_prompt_logprobs: bool = False    # compile the prompt LM head per token bucket at warm-up

    @functools.cached_property
    def limits(self):
        """The model and length limits as resolved and checked (setup.Limits), once per config:
        ValueError with one sentence for a bad model or length setting."""
        from .setup import resolve_limits
        return resolve_limits(self)


@dataclasses.dataclass(eq=False)  # identity: finding one among thousands waiting must not compare prompts
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    seed: int
    metrics: RequestMetrics
    slot: int = -1
    output: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = dataclasses.field(default_factory=list)
    cumulative: float = 0.0
    finish_reason: str | None = None
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    @property
    def kv_len(self) -> int:  # tokens in the cache once the last sampled token is written
        return len(self.prompt) + len(self.output) - 1


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, **kwargs: Any):
        self.config = config = config or EngineConfig(**kwargs)
        # Imported here so that the engine module stays free of the backend's imports.
        from .setup import build_runner
        self.runner = build_runner(config)
        limits = config.limits
        self.source, self.max_model_len, self.max_prefill = limits.source, limits.max_model_len, limits.max_prefill
        self.model_config = limits.source.config
        self.events: EventBus[PhaseEvent] = EventBus()     # each step's begin and end
        self.slot_events: EventBus[SlotEvent] = EventBus()  # decode slots taken and freed
        self.step_count = 0
        self.scheduler: Scheduler[_Request] = Scheduler(config.max_num_seqs, self.max_prefill)
        self.warmup_plan = self._shape_plan(config.expected)
        t0 = time.perf_counter()
        self.warmup_stats = self.runner.warmup(self.warmup_plan, self._variants(config.expected),
                                               config.progress, prompt_logprobs=config.enable_prompt_logprobs)
        self.warmup_s = time.perf_counter() - t0  # compiling (or loading) and first runs, no model load
        self._rng = random.Random(config.seed)
        self._requests: dict[str, _Request] = {}
        self._eos = set(self.model_config.eos_token_ids)

    def _shape_plan(self, expected: ExpectedRequests | None) -> ShapePlan:
        b = self.runner.buckets
        if expected is None:  # a server: every shape any request can use
            return ShapePlan(tuple(b.prefill_batch_shapes()), tuple(b.decode_shapes()))
        return plan_shapes(b, self.config.max_num_seqs, self.max_prefill, expected.lengths)

    @staticmethod
    def _variants(expected: ExpectedRequests | None) -> list[SamplingRow]:
        """The sampler variants to compile: all four, or the one the expected requests use."""
        if expected is None:
            return [SamplingRow(t, 0, 1.0, 0, lp) for t in (0.0, 1.0) for lp in (0, 1)]
        return [SamplingRow(1.0 if expected.random else 0.0, 0, 1.0, 0, int(expected.logprobs))]

    def describe(self) -> EngineInfo:
        """The settings in force and the devices (for run records)."""
        c = self.config
        return EngineInfo(model=c.model, weights=self.source.weights_dir or "dummy",
                          max_model_len=self.max_model_len, max_prefill_tokens=self.max_prefill,
                          max_num_seqs=c.max_num_seqs, tensor_parallel_size=c.tensor_parallel_size,
                          enforce_eager=c.enforce_eager, seed=c.seed,
                          compilation_cache_dir=self.runner.cache_dir,
                          weight_bytes=self.runner.weight_bytes(), kv_cache_bytes=self.runner.kv_cache_bytes(),
                          device=self.runner.device_info())

    def compile_stats(self) -> CompileStats:
        """The backend's compile counters now (compare two readings for what happened between)."""
        return self.runner.compile_stats()

    # ---- requests -------------------------------------------------------------------------
    def validate(self, prompt: Any, params: SamplingParams) -> list[int]:
        """The prompt's token ids, or ValueError naming what is wrong."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" not in prompt:
                raise ValueError("a prompt dict needs 'prompt_token_ids' (text prompts need a tokenizer, which this engine does not load).")
            prompt = prompt["prompt_token_ids"]
        if isinstance(prompt, str):
            raise ValueError("text prompts are not supported; pass {'prompt_token_ids': [...]}.")
        def token(t):
            if isinstance(t, bool):
                raise TypeError
            return operator.index(t)  # ints and numpy integers; not floats

        if not hasattr(prompt, "__len__") or not hasattr(prompt, "__getitem__"):
            raise ValueError(f"prompt {prompt!r:.60} is not a sequence of integer token ids.")
        try:
            ids = [token(t) for t in prompt]
        except TypeError:
            raise ValueError(f"prompt {prompt!r:.60} is not a sequence of integer token ids.") from None
        vocab = self.model_config.vocab_size
        if not ids:
            raise ValueError("prompt is empty; it needs at least one token id.")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            shown = bad if abs(bad) < 10**40 else f"of {bad.bit_length()} bits"  # str() refuses huge ints
            raise ValueError(f"token id {shown} is outside the vocabulary [0, {vocab}).")
        if len(ids) > self.max_model_len:  # the overall limit first, then the per-step one
            raise ValueError(f"prompt of {len(ids)} tokens exceeds max_model_len {self.max_model_len}.")
        if len(ids) > self.max_prefill:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds max_num_batched_tokens {self.max_prefill}.")
        if params.prompt_logprobs is not None and not self.config.enable_prompt_logprobs:
            raise ValueError("prompt logprobs need the prompt LM-head graphs, which this engine did not compile; "
                             "start it with enable_prompt_logprobs=True (the server: --enable-prompt-logprobs).")
        if len(ids) + params.max_tokens > self.max_model_len:
            asked = params.max_tokens if params.max_tokens < 10**40 else f"of {params.max_tokens.bit_length()} bits"
            raise ValueError(f"prompt of {len(ids)} tokens plus max_tokens {asked} exceeds "
                             f"max_model_len {self.max_model_len}.")
        return ids

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use.")
        ids = self.validate(prompt, params)
        req = _Request(request_id, ids, params, self._seed32(params.seed),
                       RequestMetrics(arrival_time if arrival_time is not None else time.time()))
        self._requests[request_id] = req
        self.scheduler.waiting.append(req)

    def _seed32(self, seed: int | None) -> int:
        """The sampler's 32-bit seed: a hash of the user's seed (any size), else a draw from the
        engine's seeded generator."""
        if seed is None:
            return self._rng.getrandbits(32)
        return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=4).digest(), "little")

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        waiting = set()
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            req = self._requests.pop(rid, None)
            if req is None:
                continue
            if req.slot >= 0:
                self._free_slot(req, "abort")
            else:
                waiting.add(req)
        if waiting:  # one pass over the queue, however many leave it
            kept = [r for r in self.scheduler.waiting if r not in waiting]
            self.scheduler.waiting.clear()
            self.scheduler.waiting.extend(kept)

    def has_request(self, request_id: str) -> bool:
        return request_id in self._requests

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def num_running(self) -> int:
        return self.scheduler.num_running()

    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # ---- KV-cache slots: each decode slot owns max_model_len positions of the static cache ----
    def _allocate_slot(self, req: _Request, slot: int) -> None:
        req.slot = slot
        self.scheduler.slots[slot] = req
        if self.slot_events:
            self.slot_events.publish(SlotEvent("allocate", req.request_id, slot, len(req.prompt),
                                               self.num_running()))

    def _free_slot(self, req: _Request, reason: str) -> None:
        slot, req.slot = req.slot, -1
        self.scheduler.slots[slot] = None
        if self.slot_events:
            self.slot_events.publish(SlotEvent("free", req.request_id, slot, max(0, req.kv_len),
                                               self.num_running(), len(req.output), reason))

    # ---- stepping -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One prefill (of every waiting request that fits) or one decode over all slots."""
        step = self.scheduler.next_step()
        if isinstance(step, Prefill):
            outputs = self._prefill(step.requests, step.slots)
        elif isinstance(step, Decode):
            outputs = self._decode(step.requests)
        else:
            return []
        self.step_count += 1
        return outputs

    def _run(self, phase: str, reqs: Sequence[_Request], shape: tuple[int, int], tokens: Sequence[int],
             padded: int, kv_lens: Sequence[int], kv_bucket: int, sampling: str, call):
        """Run `call` as engine step `phase` (number `step_count`), in its profiler scope,
        with begin/end events. `shape`: (bucket, sequences compiled); `tokens` and `kv_lens`:
        each request's tokens in the step and context after it."""
        record = StepRecord(step=self.step_count, phase=phase, bucket=shape[0], batch_size=len(reqs),
                            num_tokens=sum(tokens), padded_tokens=padded, kv_len_min=min(kv_lens),
                            kv_len_max=max(kv_lens), kv_bucket=kv_bucket,
                            request_ids=tuple(r.request_id for r in reqs), wall_start=time.time(),
                            request_tokens=tuple(tokens), request_kv=tuple(kv_lens),
                            arrivals=tuple(r.metrics.arrival_time for r in reqs) if phase == "prefill" else (),
                            seq_bucket=shape[1], sampling=sampling)
        if self.events:
            self.events.publish(PhaseEvent("begin", record))
        with self.runner.step_scope(phase, self.step_count):
            result = call()
        end = time.time()
        if self.events:
            self.events.publish(PhaseEvent("end", dataclasses.replace(
                record, wall_end=end, compiles=result.compiles.compiles,
                compile_time_s=result.compiles.compile_time_s)))
        return result, end

    def _prefill(self, reqs: list[_Request], slots: list[int]) -> list[RequestOutput]:
        lens = [len(r.prompt) for r in reqs]
        T, N = self.runner.buckets.prefill_batch_shape(lens)
        now = time.time()
        for req, slot in zip(reqs, slots):
            self._allocate_slot(req, slot)
            req.metrics.first_scheduled_time = now
        rows = [self._row(r) for r in reqs]
        scored = any(r.params.prompt_logprobs is not None for r in reqs)
        result, now = self._run("prefill", reqs, (T, N), lens, T, lens, T, _variant(rows, scored),
                                lambda: self.runner.prefill(slots, [r.prompt for r in reqs], rows,
                                                            prompt_logprobs=scored))
        for i, req in enumerate(reqs):
            req.metrics.first_token_time = now
            if req.params.prompt_logprobs is not None:
                req.prompt_logprobs = prompt_entries(req.prompt, result.prompt[i], req.params.prompt_logprobs)
        return [self._append(r, result, i, now) for i, r in enumerate(reqs)]

    def _decode(self, reqs: list[_Request]) -> list[RequestOutput]:
        slots = [r.slot for r in reqs]
        positions = [r.kv_len for r in reqs]
        B, span = self.runner.buckets.decode_shape(slots, positions)
        rows = [self._row(r) for r in reqs]
        result, now = self._run(
            "decode", reqs, (B, B), [1] * len(reqs), B, [p + 1 for p in positions], span, _variant(rows),
            lambda: self.runner.decode(slots, [r.output[-1] for r in reqs], positions, rows))
        return [self._append(r, result, i, now) for i, r in enumerate(reqs)]

    def _row(self, req: _Request) -> SamplingRow:
        p = req.params
        # A k of the whole vocabulary or more keeps every token: that is "off", and a k that large
        # (2**63, say) must never reach a device tensor.
        top_k = p.top_k if 0 < p.top_k < self.model_config.vocab_size else 0
        return SamplingRow(float(p.temperature), top_k, float(p.top_p), req.seed, p.logprobs or 0,
                           float(p.presence_penalty), float(p.frequency_penalty), float(p.repetition_penalty))

    def _append(self, req: _Request, result, i: int, now: float) -> RequestOutput:
        token, lp = result.tokens[i], result.logprobs[i]
        req.output.append(token)
        req.cumulative += lp
        if req.params.logprobs is not None:
            rank, alternatives = result.top[i] if result.top else (None, [])
            entry = {token: Logprob(lp, rank)}
            for r, (tid, tlp) in enumerate(alternatives, start=1):
                entry.setdefault(tid, Logprob(tlp, r))
            req.logprobs.append(entry)
        req.metrics.last_token_time = now
        if len(req.output) >= req.params.max_tokens:
            req.finish_reason = "length"
        elif (token in self._eos and not req.params.ignore_eos) or token in (req.params.stop_token_ids or ()):
            req.finish_reason = "stop"
        if req.finish_reason:
            req.metrics.finished_time = now
            self._free_slot(req, req.finish_reason)
            self._requests.pop(req.request_id, None)
        return self._output(req)

    @staticmethod
    def _output(req: _Request) -> RequestOutput:
        done = req.finish_reason is not None
        completion = CompletionOutput(0, list(req.output), req.cumulative,
                                      list(req.logprobs) if req.params.logprobs is not None else None,
                                      req.finish_reason)
        return RequestOutput(req.request_id, req.prompt, [completion], done, req.metrics,
                             prompt_logprobs=req.prompt_logprobs)


def _variant(rows: Sequence[SamplingRow], prompt_logprobs: bool = False) -> str:
    """The sampler program a step's rows select (one is compiled per row count and variant):
    random when any row samples, +logprobs when any asks for alternatives; +prompt_logprobs when
    the prefill also scores its prompts (another LM-head program per token bucket)."""
    kind = "random" if any(r.temperature > 0 for r in rows) else "greedy"
    return kind + ("+logprobs" if any(r.num_logprobs for r in rows) else "") + \
        ("+prompt_logprobs" if prompt_logprobs else "")
