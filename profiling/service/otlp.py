"""Request spans over OpenTelemetry, as vLLM exports them with `--otlp-traces-endpoint`: with
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) set, the server sends one
`llm_request` span per finished engine request through the SDK's OTLP/HTTP exporter, with
vLLM's `gen_ai.*` latency attributes and this engine's step-time attributes: the request's share
of the time of the steps it rode in (by its tokens in a packed prefill, equally in decode, as
`analysis/requests.py` shares device time), the padded share of it, its steps and compiles.

Everything comes from the engine's public events (its step records and slot events); the
listeners run in the engine's thread and only keep numbers; spans are sent from the SDK's
batch processor thread. An error here is reported once and never reaches a request."""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from tpu_engine.events import PhaseEvent, SlotEvent

from ..analysis.requests import token_weights

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SPAN = "llm_request"


def endpoint(environ=os.environ) -> str | None:
    """The OTLP endpoint asked for, None when none is; ValueError for one that is not a URL."""
    for name in ENDPOINT_ENVS:
        value = environ.get(name, "").strip()
        if value:
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"{name}={value!r} is not an http:// or https:// URL (the OTLP/HTTP collector).")
            return value
    return None


@dataclasses.dataclass
class _Open:
    arrival: float | None = None        # engine wall clock, s
    scheduled: float | None = None
    first_token: float | None = None
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    padding_ms: float = 0.0
    steps: int = 0
    compiles: int = 0


class RequestTracer:
    """Listens to an engine; each request that gives back its slot becomes one span."""

    def __init__(self, provider):
        self.tracer = provider.get_tracer("tpu_engine.serve")
        self.open: dict[str, _Open] = {}
        self._failed = False

    def on_phase(self, e: PhaseEvent) -> None:
        if e.kind == "end":
            self._guarded(self._step, e.record)

    def on_slot(self, e: SlotEvent) -> None:
        if e.kind == "free":
            self._guarded(self._finish, e)

    def _guarded(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as exc:  # noqa: BLE001 -- tracing never fails a request
            if not self._failed:
                self._failed = True
                print(f"warning: OTLP request spans failed ({type(exc).__name__}: {exc}); serving goes on "
                      f"(reported once).", file=sys.stderr, flush=True)

    def _step(self, r) -> None:
        wall_ms = (r.wall_end - r.wall_start) * 1e3
        pad = 1 - r.num_tokens / r.padded_tokens if r.padded_tokens else 0.0
        tokens = dict(zip(r.request_ids, r.request_tokens))
        arrivals = dict(zip(r.request_ids, r.arrivals))
        for rid, w in zip(r.request_ids, token_weights([tokens.get(x) for x in r.request_ids])):
            o = self.open.setdefault(rid, _Open())
            share = wall_ms * w
            if r.phase == "prefill":
                o.arrival, o.scheduled, o.first_token = arrivals.get(rid), r.wall_start, r.wall_end
                o.prompt_tokens, o.prefill_ms = tokens.get(rid, 0), o.prefill_ms + share * (1 - pad)
            else:
                o.decode_ms += share * (1 - pad)
            o.padding_ms += share * pad
            o.steps += 1
            o.compiles += r.compiles or 0

    def _finish(self, e: SlotEvent) -> None:
        o = self.open.pop(e.request_id, None)
        if o is None or o.arrival is None:
            return
        now = time.time()
        attrs = {"gen_ai.request.id": e.request_id, "gen_ai.usage.prompt_tokens": o.prompt_tokens,
                 "gen_ai.usage.completion_tokens": e.output_tokens, "gen_ai.response.finish_reasons": [e.finish_reason or ""],
                 "gen_ai.latency.time_in_queue": o.scheduled - o.arrival,
                 "gen_ai.latency.time_to_first_token": o.first_token - o.arrival,
                 "gen_ai.latency.e2e": now - o.arrival,
                 "gen_ai.latency.time_in_model_prefill": o.prefill_ms / 1e3,
                 "gen_ai.latency.time_in_model_decode": o.decode_ms / 1e3,
                 "tpu.prefill_step_ms": o.prefill_ms, "tpu.decode_step_ms": o.decode_ms,
                 "tpu.padding_ms": o.padding_ms, "tpu.steps": o.steps, "tpu.compiles": o.compiles}
        span = self.tracer.start_span(SPAN, start_time=int(o.arrival * 1e9), attributes=attrs)
        span.end(end_time=int(now * 1e9))


def install(engine, url: str, exporter=None):
    """Send `engine`'s request spans to `url` (or to `exporter`, e.g. the SDK's in-memory one);
    returns the function that flushes and stops it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    provider = TracerProvider(resource=Resource.create({"service.name": "tpu-engine"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        traces = url if url.rstrip("/").endswith("/v1/traces") else url.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RequestTracer(provider)
    off = [engine.events.subscribe(tracer.on_phase), engine.slot_events.subscribe(tracer.on_slot)]

    def close() -> None:
        for unsubscribe in off:
            unsubscribe()
        provider.shutdown()  # flushes what the batch processor holds
    return close
