"""`/metrics` under vLLM's names and types (so vLLM's dashboards and alerts read this server),
through `prometheus_client`. Everything is labelled `model_name` (the first served name).

Gauges   vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc (the
         fraction of the static KV cache's positions holding a running request's tokens; read at
         scrape time)
Counters vllm:prompt_tokens_total, vllm:generation_tokens_total,
         vllm:request_success_total{finished_reason=stop|length|abort}, vllm:num_preemptions_total
         (always 0: a request keeps its slot until it ends), tpu_engine:engine_steps_total (this
         engine's own)
Histograms (seconds) vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds and its
         older name vllm:time_per_output_token_seconds (the same observations),
         vllm:e2e_request_latency_seconds, vllm:request_queue_time_seconds,
         vllm:request_prefill_time_seconds, vllm:request_decode_time_seconds,
         vllm:request_inference_time_seconds
Histograms (tokens) vllm:request_prompt_tokens, vllm:request_generation_tokens,
         vllm:iteration_tokens_total (real tokens per engine step)
Updates come from the engine thread; prometheus_client's metrics are thread-safe.
"""
from __future__ import annotations

import dataclasses

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..outputs import RequestMetrics

prometheus_client.disable_created_metrics()  # no `_created` series, as vLLM exposes none

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_GAPS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _token_buckets(max_model_len: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len."""
    out, base = [], 1
    while base <= max_model_len:
        out += [b for b in (base, 2 * base, 5 * base) if b <= max_model_len]
        base *= 10
    return [float(b) for b in out]


@dataclasses.dataclass
class Finished:
    """One request as it ends, for the per-request histograms."""
    metrics: RequestMetrics
    prompt_tokens: int
    generation_tokens: int
    reason: str             # stop, length or abort
    end: float              # time.time() when it ended


class ServerMetrics:
    def __init__(self, engine, model_name: str, max_model_len: int):
        self.registry = r = CollectorRegistry()
        label = {"labelnames": ["model_name"], "registry": r}

        def hist(name, doc, buckets):
            return Histogram(name, doc, buckets=buckets, **label).labels(model_name)
        running = Gauge("vllm:num_requests_running", "Requests holding a decode slot.", **label).labels(model_name)
        running.set_function(engine.num_running)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", **label).labels(model_name)
        waiting.set_function(engine.num_waiting)
        usage = Gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache positions in use (0 to 1).",
                      **label).labels(model_name)
        usage.set_function(lambda: kv_cache_usage(engine))
        self.preemptions = Counter("vllm:num_preemptions", "Preempted requests (none: slots are kept).",
                                   **label).labels(model_name)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled prompt tokens.", **label).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", **label).labels(model_name)
        self._success = Counter("vllm:request_success", "Finished requests by finish reason.",
                                labelnames=["model_name", "finished_reason"], registry=r)
        self.success = {k: self._success.labels(model_name, k) for k in ("stop", "length", "abort")}
        self.steps = Counter("tpu_engine:engine_steps", "Engine steps (one prefill or one decode each).",
                             **label).labels(model_name)
        self.ttft = hist("vllm:time_to_first_token_seconds", "Arrival to first token.", _LATENCY)
        self._itl = hist("vllm:inter_token_latency_seconds", "Time between two tokens of a request.", _GAPS)
        self._tpot = hist("vllm:time_per_output_token_seconds", "Time per output token (inter-token latency).",
                          _GAPS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Arrival to the end of the request.", _LATENCY)
        self.queue = hist("vllm:request_queue_time_seconds", "Arrival to first scheduled.", _LATENCY)
        self.prefill = hist("vllm:request_prefill_time_seconds", "First scheduled to first token.", _LATENCY)
        self.decode = hist("vllm:request_decode_time_seconds", "First token to the end.", _LATENCY)
        self.inference = hist("vllm:request_inference_time_seconds", "First scheduled to the end.", _LATENCY)
        tokens = _token_buckets(max_model_len)
        self.request_prompt = hist("vllm:request_prompt_tokens", "Prompt tokens per request.", tokens)
        self.request_generation = hist("vllm:request_generation_tokens", "Generated tokens per request.", tokens)
        self.iteration_tokens = hist("vllm:iteration_tokens_total", "Tokens per engine step.",
                                     _token_buckets(engine.max_prefill))

    def inter_token(self, gap_s: float) -> None:
        self._itl.observe(gap_s)
        self._tpot.observe(gap_s)

    def first_token(self, m: RequestMetrics, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.ttft.observe(m.first_token_time - m.arrival_time)

    def finished(self, f: Finished) -> None:
        m = f.metrics
        self.success[f.reason].inc()
        self.e2e.observe(f.end - m.arrival_time)
        self.request_prompt.observe(f.prompt_tokens)
        self.request_generation.observe(f.generation_tokens)
        if m.first_scheduled_time is not None:
            self.queue.observe(m.first_scheduled_time - m.arrival_time)
            self.inference.observe(f.end - m.first_scheduled_time)
        if m.first_token_time is not None:
            self.prefill.observe(m.first_token_time - (m.first_scheduled_time or m.arrival_time))
            self.decode.observe(f.end - m.first_token_time)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


def kv_cache_usage(engine) -> float:
    """Tokens held in the cache by running requests over the cache's positions (slots x
    max_model_len). Read from the engine thread's state without a lock: a scrape may see a step
    half applied, never a wrong type."""
    slots = list(engine.scheduler.slots)
    held = sum(max(0, r.kv_len) for r in slots if r is not None)
    return held / (len(slots) * engine.max_model_len) if slots else 0.0
