"""The service profile's tables on small synthetic inputs, where every figure is known by hand:
request, batch, forward and KV-cache rows, the summaries, collection periods, and the engine's
events turned into spans by `EngineSpans` through a real collector and events file."""
from __future__ import annotations

import pytest

from profiling.service.collector import Collector
from profiling.service.engine_spans import EngineSpans
from profiling.service.events import Marker, Span, read_events
from profiling.service.summaries import collected_seconds, summaries
from profiling.service.tables import build
from tpu_engine.events import PhaseEvent, SlotEvent, StepRecord

MS = 1_000_000  # ns
ENGINE = (0, 1, "engine")


def span(domain, name, start_ms, end_ms, thread=ENGINE, src=0, **attrs) -> Span:
    return Span(domain, name, start_ms * MS, end_ms * MS, thread, src, attrs)


def two_requests() -> list[Span]:
    """HTTP request h1 with one prompt (h1-0, 3 tokens, 3 output tokens) and h2-0 (5 tokens, 1
    output token), served by one prefill each and two decodes of h1-0."""
    return [
        span("Request", "http", 0, 100, thread=(0, 2, "loop"), request_id="h1"),
        span("Request", "arrive", 1, 1, request_id="h1-0", prompt_tokens=3, max_tokens=3),
        span("Request", "http", 5, 40, thread=(0, 2, "loop"), request_id="h2"),
        span("Request", "arrive", 6, 6, request_id="h2-0", prompt_tokens=5, max_tokens=1),
        span("KVCache", "allocate", 10, 10, request_id="h1-0", slot=0, tokens=3, slots_used=1),
        span("Schedule", "batch", 10, 30, step=0, phase="prefill", batch_size=1, num_tokens=3, padded_tokens=16,
             kv_len_max=3, request_ids=["h1-0"]),
        span("ModelExecute", "prefill", 12, 28, num_tokens=3),
        span("KVCache", "allocate", 30, 30, request_id="h2-0", slot=1, tokens=5, slots_used=2),
        span("Schedule", "batch", 30, 38, step=1, phase="prefill", batch_size=1, num_tokens=5, padded_tokens=16,
             kv_len_max=5, request_ids=["h2-0"]),
        span("KVCache", "free", 39, 39, request_id="h2-0", slot=1, tokens=5, slots_used=1, output_tokens=1,
             finish_reason="length"),
        span("Schedule", "batch", 40, 50, step=2, phase="decode", batch_size=1, num_tokens=1, padded_tokens=1,
             kv_len_max=4, request_ids=["h1-0"]),
        span("ModelExecute", "decode", 41, 49, batch_size=1, num_tokens=1),
        span("Schedule", "batch", 50, 60, step=3, phase="decode", batch_size=1, num_tokens=1, padded_tokens=1,
             kv_len_max=5, request_ids=["h1-0"]),
        span("KVCache", "free", 61, 61, request_id="h1-0", slot=0, tokens=5, slots_used=0, output_tokens=3,
             finish_reason="length"),
        span("Custom", "mine", 70, 71),
    ]


def test_request_rows_time_each_request_from_its_http_arrival():
    data = build(two_requests(), [Marker("enable", 0, 0)], {0: 123})
    rows = {r.request_id: r for r in data.request}
    h1, h2 = rows["h1-0"], rows["h2-0"]
    assert (h1.http_id, h1.prompt_tokens, h1.output_tokens, h1.max_tokens) == ("h1", 3, 3, 3)
    assert (h1.queue_ms, h1.ttft_ms, h1.e2e_ms) == (10, 30, 61)
    assert h1.tpot_ms == pytest.approx((61 - 30) / 2)
    assert (h2.queue_ms, h2.ttft_ms, h2.e2e_ms, h2.tpot_ms) == (25, 33, 34, None)
    assert h1.complete == h2.complete == 1
    assert [r.request_id for r in data.request] == ["h1-0", "h2-0"]  # by arrival


def test_batch_forward_and_kvcache_rows():
    data = build(two_requests(), [], {0: 1})
    assert [(b.step, b.phase, b.duration_ms, b.request_ids) for b in data.batch] == \
        [(0, "prefill", 20, "h1-0"), (1, "prefill", 8, "h2-0"), (2, "decode", 10, "h1-0"), (3, "decode", 10, "h1-0")]
    assert [(f.phase, f.step, f.duration_ms) for f in data.forward] == \
        [("prefill", 0, 16), ("decode", 2, 8)]
    kv = [(r.action, r.request_id, r.slots_used, r.tokens_held) for r in data.kvcache]
    # h1-0 holds 3, h2-0 adds 5 and leaves; h1-0's two decodes add a token each before it leaves
    assert kv == [("allocate", "h1-0", 1, 3), ("allocate", "h2-0", 2, 8), ("free", "h2-0", 1, 3),
                  ("free", "h1-0", 0, 0)]
    assert [c[2:] for c in data.counters] == [(1, 3), (2, 8), (1, 3), (1, 4), (1, 5), (0, 0)]
    assert [s.name for s in data.by[None]] == ["mine"]  # unknown domains: trace only


def test_summaries_count_requests_tokens_and_busy_time():
    data = build(two_requests(), [Marker("enable", 0, 0)], {0: 1})
    t = summaries(data)
    svc = {r.metric: r.value for r in t["service_summary"].rows}
    assert svc["duration_s"] == pytest.approx(0.1)       # first span to last, collection on throughout
    assert (svc["requests"], svc["incomplete"], svc["failed"], svc["steps"]) == (2, 0, 0, 4)
    assert svc["output_token_throughput"] == pytest.approx(4 / 0.1)
    assert svc["engine_busy_fraction"] == pytest.approx(0.048 / 0.1)
    batch = {r.phase: r for r in t["batch_summary"].rows}
    assert batch["prefill"].count == 2 and batch["prefill"].padding_waste == pytest.approx(1 - 8 / 32)
    assert batch["all"].total_tokens == 10
    req = {r.metric: r for r in t["request_summary"].rows}
    assert req["ttft_ms"].count == 2 and req["ttft_ms"].mean == pytest.approx((30 + 33) / 2)
    assert req["tpot_ms"].count == 1


def test_collected_time_leaves_out_periods_with_collection_off():
    s = 1000  # ms
    markers = [Marker("enable", 0, 0), Marker("disable", 10 * s * MS, 0), Marker("enable", 100 * s * MS, 0)]
    # two periods of 4 s and 2 s, 90 s apart; a second process overlapping the first period
    spans = [span("D", "x", 1 * s, 3 * s), span("D", "x", 2 * s, 5 * s), span("D", "x", 101 * s, 103 * s),
             span("D", "x", 4 * s, 6 * s, src=1)]
    assert collected_seconds(spans, markers) == pytest.approx(5 + 2)
    assert collected_seconds([span("D", "x", 1 * s, 3 * s), span("D", "x", 50 * s, 51 * s)], []) == pytest.approx(50)


def _record(step, phase, ids, **kw) -> StepRecord:
    return StepRecord(step=step, phase=phase, bucket=16, batch_size=len(ids), num_tokens=len(ids),
                      padded_tokens=16, kv_len_min=3, kv_len_max=7, kv_bucket=16, request_ids=tuple(ids),
                      wall_start=0.0, **kw)


def test_engine_events_become_batch_and_kvcache_spans(tmp_path):
    """The engine's own events, recorded while collection is on, give the tables their batch and
    KV-cache rows without any symbol patching."""
    collector = Collector()
    spans = EngineSpans(collector)
    try:
        spans.on_phase(PhaseEvent("begin", _record(5, "prefill", ["a"])))  # collection off: dropped
        spans.on_phase(PhaseEvent("end", _record(5, "prefill", ["a"], wall_end=1.0)))
        collector.start(str(tmp_path))
        spans.on_slot(SlotEvent("allocate", "b", 2, 7, 1))
        spans.on_phase(PhaseEvent("begin", _record(6, "prefill", ["b"])))
        spans.on_phase(PhaseEvent("end", _record(6, "prefill", ["b"], wall_end=1.0)))
        spans.on_slot(SlotEvent("free", "b", 2, 7, 0, output_tokens=1, finish_reason="abort"))
        collector.stop()
    finally:
        collector.close()
    header, recorded, markers = read_events(collector.path, 0)
    data = build(recorded, markers, {0: header["pid"]})
    assert [(b.step, b.phase, b.batch_size, b.request_ids, b.padded_tokens, b.kv_len_max)
            for b in data.batch] == [(6, "prefill", 1, "b", 16, 7)]
    assert [(r.action, r.request_id, r.slot, r.tokens, r.slots_used) for r in data.kvcache] \
        == [("allocate", "b", 2, 7, 1), ("free", "b", 2, 7, 0)]
    row = data.request[0]
    assert (row.request_id, row.output_tokens, row.finish_reason) == ("b", 1, "abort")
