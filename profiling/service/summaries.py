"""The service profile's summaries: request metrics (TTFT, TPOT, end-to-end, queue time, token
counts: mean, p50, p90, p99), batch sizes and durations per phase with their padding waste, and
the service's throughput, concurrency and engine busy fraction."""
from __future__ import annotations

import bisect
import collections
import dataclasses

from ..table import Table, percentile
from .events import Marker, Span
from .tables import BATCH, BatchRow, ServiceData


@dataclasses.dataclass(frozen=True)
class Stats:
    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None


def _stats(values) -> Stats:
    v = [x for x in values if x is not None]
    if not v:
        return Stats(0)
    return Stats(len(v), sum(v) / len(v), percentile(v, 50), percentile(v, 90), percentile(v, 99), min(v), max(v))


@dataclasses.dataclass(frozen=True)
class MetricStatsRow:
    """request_summary: one request metric over the complete requests (the fields of Stats)."""
    metric: str
    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    min: float | None
    max: float | None


@dataclasses.dataclass(frozen=True)
class BatchSummaryRow:
    phase: str              # prefill, decode or all
    count: int
    mean_batch_size: float | None
    p50_batch_size: float | None
    p99_batch_size: float | None
    max_batch_size: float | None
    mean_duration_ms: float | None
    p50_duration_ms: float | None
    p99_duration_ms: float | None
    total_tokens: int
    padding_waste: float | None


@dataclasses.dataclass(frozen=True)
class MetricRow:
    metric: str
    value: float | int | None


def collected_seconds(spans: list[Span], markers: list[Marker]) -> float:
    """Time covered by the spans of each collection period (enable to disable), so that periods
    with collection off do not dilute throughput; the union over server processes."""
    cuts = collections.defaultdict(list)       # per source: times where a period starts
    for m in markers:
        if m.name == "enable":
            cuts[m.src].append(m.t)
    starts = {src: sorted(ts) for src, ts in cuts.items()}
    periods: dict[tuple, list[int]] = {}
    for s in spans:
        key = (s.src, bisect.bisect_right(starts.get(s.src, []), s.start))
        lo_hi = periods.setdefault(key, [s.start, s.end])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], s.start), max(lo_hi[1], s.end)
    total, covered_to = 0, None
    for lo, hi in sorted(periods.values()):
        if covered_to is not None:
            lo = max(lo, covered_to)
        total += max(0, hi - lo)
        covered_to = hi if covered_to is None else max(covered_to, hi)
    return total / 1e9


def _batch_summary(batches: list[BatchRow]) -> Table[BatchSummaryRow]:
    rows = []
    for phase in ("prefill", "decode", "all"):
        bs = [b for b in batches if phase == "all" or b.phase == phase]
        size, dur = _stats([b.batch_size for b in bs]), _stats([b.duration_ms for b in bs])
        tokens = sum(b.num_tokens or 0 for b in bs)
        padded = sum(b.padded_tokens or 0 for b in bs)
        rows.append(BatchSummaryRow(phase, len(bs), size.mean, size.p50, size.p99, size.max, dur.mean, dur.p50,
                                    dur.p99, tokens, 1 - tokens / padded if padded else None))
    return Table("batch_summary", BatchSummaryRow, rows)


def summaries(d: ServiceData) -> dict[str, Table]:
    requests, batches = d.request, d.batch
    done = [r for r in requests if r.complete]
    metrics = ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "prompt_tokens", "output_tokens")
    req = Table("request_summary", MetricStatsRow,
                [MetricStatsRow(m, **dataclasses.asdict(_stats([getattr(r, m) for r in done])))
                 for m in metrics])
    duration = collected_seconds(d.spans, d.markers)
    engines = len({b.src for b in d.by[BATCH]}) or 1  # one per server process
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    out_tokens = sum(r.output_tokens or 0 for r in done)
    service = [("duration_s", duration), ("requests", len(done)),
               ("failed", sum(1 for r in done if r.finish_reason not in ("length", "stop"))),
               ("incomplete", len(requests) - len(done)),
               ("request_throughput", per_s(len(done))), ("output_token_throughput", per_s(out_tokens)),
               ("total_token_throughput", per_s(out_tokens + sum(r.prompt_tokens or 0 for r in done))),
               ("mean_concurrency", per_s(sum(r.e2e_ms for r in done) / 1e3)),
               ("engine_busy_fraction", per_s(sum(b.duration_ms for b in batches) / 1e3 / engines)),
               ("steps", len(batches)), ("events", len(d.spans) + len(d.markers))]
    return {"request_summary": req, "batch_summary": _batch_summary(batches),
            "service_summary": Table("service_summary", MetricRow, [MetricRow(k, v) for k, v in service])}
