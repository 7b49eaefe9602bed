"""The service profile's tables, from its spans (times in wall-clock seconds, durations in ms):
request (one row per engine request id), batch (Schedule/batch spans, one per engine step),
forward (ModelExecute spans) and kvcache (KVCache allocate/free marks); their summaries are
summaries.py. They rely on the domain/name pairs in `KNOWN` (the engine's events and
default_symbols.yaml); spans of any other domain/name appear in the Chrome trace only.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses

from ..table import Table
from .events import Marker, Span


@dataclasses.dataclass(frozen=True)
class RequestRow:
    request_id: str
    http_id: str | None
    arrival_time: float | None
    scheduled_time: float | None
    first_token_time: float | None
    finish_time: float | None
    prompt_tokens: int | None
    output_tokens: int | None
    max_tokens: int | None
    finish_reason: str | None
    queue_ms: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    complete: int           # 1: arrived, scheduled and freed inside the collection


@dataclasses.dataclass(frozen=True)
class BatchRow:
    step: int | None
    phase: str | None
    start_time: float
    end_time: float
    duration_ms: float
    batch_size: int | None
    num_tokens: int | None
    padded_tokens: int | None
    kv_len_max: int | None
    request_ids: str        # space-separated engine request ids
    compiles: int | None = None   # XLA compilations during the step (events files before them: None)


@dataclasses.dataclass(frozen=True)
class ForwardRow:
    phase: str
    start_time: float
    end_time: float
    duration_ms: float
    batch_size: int | None
    num_tokens: int | None
    step: int | None        # the step of the batch that contains it


@dataclasses.dataclass(frozen=True)
class KVRow:
    time: float
    action: str             # allocate or free
    request_id: str | None
    slot: int | None
    tokens: int | None
    slots_used: int
    tokens_held: int


ROW_TYPES = {"request": RequestRow, "batch": BatchRow, "forward": ForwardRow, "kvcache": KVRow}
ARRIVE, HTTP, STEP, BATCH = ("Request", "arrive"), ("Request", "http"), ("Schedule", "step"), ("Schedule", "batch")
PREFILL, DECODE = ("ModelExecute", "prefill"), ("ModelExecute", "decode")
ALLOCATE, FREE = ("KVCache", "allocate"), ("KVCache", "free")
KNOWN = {ARRIVE, HTTP, STEP, BATCH, PREFILL, DECODE, ALLOCATE, FREE}


@dataclasses.dataclass
class RequestSpans:
    """What the spans say about one engine request."""
    arrive: Span | None = None
    alloc: Span | None = None
    free: Span | None = None
    prefill: Span | None = None    # the batch that prefilled it
    http: Span | None = None       # its HTTP request's span (ids `<http id>-<prompt index>`)
    decodes: int = 0

    @property
    def arrival(self) -> int | None:
        """When the request arrived: at the HTTP server if recorded, else at the engine."""
        return self.http.start if self.http else self.arrive.start if self.arrive else None


@dataclasses.dataclass
class ServiceData:
    spans: list[Span]
    markers: list[Marker]
    pids: dict[int, int]                        # events file -> server process id
    by: dict[tuple[str, str] | None, list[Span]]  # known (domain, name) -> spans; None: the rest
    requests: dict[str, RequestSpans]
    request: list[RequestRow]                   # the tables of ROW_TYPES, by name
    batch: list[BatchRow]
    forward: list[ForwardRow]
    kvcache: list[KVRow]
    counters: list[tuple[int, int, int, int]]   # (time, source, KV slots used, KV tokens held)


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _s(ns):
    return None if ns is None else ns / 1e9


def _ms(a, b):
    return None if a is None or b is None else (b - a) / 1e6


def batch_ids(b: Span) -> list[str]:
    ids = b.attrs.get("request_ids")
    return [str(r) for r in ids] if isinstance(ids, list) else []


def build(spans: list[Span], markers: list[Marker], pids: dict[int, int]) -> ServiceData:
    spans.sort(key=lambda s: (s.start, -s.end))
    by: dict = collections.defaultdict(list)
    for s in spans:
        by[s.key if s.key in KNOWN else None].append(s)
    requests = _requests(by)
    kv_rows, counters = _kvcache(by)
    return ServiceData(spans, markers, pids, by, requests, _request_rows(requests), _batches(by), _forward(by),
                       kv_rows, counters)


def tables_of(d: ServiceData) -> dict[str, Table]:
    """The request, batch, forward and kvcache tables."""
    return {name: Table(name, row_type, getattr(d, name)) for name, row_type in ROW_TYPES.items()}


def _requests(by) -> dict[str, RequestSpans]:
    reqs: dict[str, RequestSpans] = collections.defaultdict(RequestSpans)
    for key, field in ((ARRIVE, "arrive"), (ALLOCATE, "alloc"), (FREE, "free")):
        for s in by[key]:
            rid = s.attrs.get("request_id")
            if rid is not None and getattr(reqs[str(rid)], field) is None:
                setattr(reqs[str(rid)], field, s)
    http = {str(s.attrs["request_id"]): s for s in by[HTTP] if "request_id" in s.attrs}
    for b in by[BATCH]:
        for rid in batch_ids(b):
            r = reqs[rid]
            if b.attrs.get("phase") == "prefill":
                r.prefill = r.prefill or b
            else:
                r.decodes += 1
    for rid, r in reqs.items():
        r.http = http.get(rid.rsplit("-", 1)[0])
    return reqs


def _batches(by) -> list[BatchRow]:
    rows = []
    for b in by[BATCH]:
        a = b.attrs
        rows.append(BatchRow(step=_int(a.get("step")), phase=a.get("phase"), start_time=_s(b.start),
                         end_time=_s(b.end), duration_ms=_ms(b.start, b.end), batch_size=_int(a.get("batch_size")),
                         num_tokens=_int(a.get("num_tokens")), padded_tokens=_int(a.get("padded_tokens")),
                             kv_len_max=_int(a.get("kv_len_max")), request_ids=" ".join(batch_ids(b)),
                             compiles=_int(a.get("compiles"))))
    return rows


def _forward(by) -> list[ForwardRow]:
    """ModelExecute spans, each with the step of the batch (same thread) that contains it."""
    batches = collections.defaultdict(list)
    for b in by[BATCH]:
        batches[b.thread].append(b)
    starts = {t: [b.start for b in bs] for t, bs in batches.items()}
    rows = []
    for f in by[PREFILL] + by[DECODE]:
        i = bisect.bisect_right(starts.get(f.thread, []), f.start) - 1
        b = batches[f.thread][i] if i >= 0 and batches[f.thread][i].end >= f.end else None
        ba = b.attrs if b else {}
        rows.append(ForwardRow(phase=f.name, start_time=_s(f.start), end_time=_s(f.end),
                               duration_ms=_ms(f.start, f.end),
                               batch_size=_int(f.attrs.get("batch_size", ba.get("batch_size"))),
                               num_tokens=_int(f.attrs.get("num_tokens")), step=_int(ba.get("step"))))
    return sorted(rows, key=lambda r: r.start_time)


def _kvcache(by) -> tuple[list[KVRow], list[tuple[int, int, int, int]]]:
    """KV cache: slots in use and tokens held, per server process, at every allocate, free and
    decode step (a decode adds one token to each of its requests)."""
    timeline = sorted([(s.start, s.name, s) for k in (ALLOCATE, FREE) for s in by[k]]
                      + [(b.end, "decode", b) for b in by[BATCH] if b.attrs.get("phase") == "decode"],
                      key=lambda x: x[0])
    state = collections.defaultdict(lambda: {"slots": 0, "held": {}, "total": 0})
    rows, counters = [], []
    for t, action, s in timeline:
        st, a = state[s.src], s.attrs
        if action == "decode":
            for r in batch_ids(s):
                if r in st["held"]:
                    st["held"][r] += 1
                    st["total"] += 1
        else:
            rid = None if a.get("request_id") is None else str(a.get("request_id"))
            st["total"] -= st["held"].pop(rid, 0)
            if action == "allocate":
                st["held"][rid] = _int(a.get("tokens")) or 0
                st["total"] += st["held"][rid]
            used = _int(a.get("slots_used"))
            st["slots"] = used if used is not None else max(0, st["slots"] + (1 if action == "allocate" else -1))
            rows.append(KVRow(time=_s(t), action=action, request_id=rid, slot=_int(a.get("slot")),
                              tokens=_int(a.get("tokens")), slots_used=st["slots"], tokens_held=st["total"]))
        counters.append((t, s.src, st["slots"], st["total"]))
    return rows, counters


def _request_rows(requests: dict[str, RequestSpans]) -> list[RequestRow]:
    rows = []
    for rid, r in requests.items():
        arrival, alloc = r.arrival, r.alloc.start if r.alloc else None
        first = r.prefill.end if r.prefill else None
        finish = r.free.start if r.free else None
        fa, aa = r.free.attrs if r.free else {}, r.arrive.attrs if r.arrive else {}
        out = _int(fa.get("output_tokens"))
        if out is None and r.prefill:
            out = 1 + r.decodes
        prompt = _int(aa.get("prompt_tokens"))
        if prompt is None and r.alloc:
            prompt = _int(r.alloc.attrs.get("tokens"))
        rows.append(RequestRow(
            request_id=rid, http_id=rid.rsplit("-", 1)[0] if r.http else None, arrival_time=_s(arrival),
            scheduled_time=_s(alloc), first_token_time=_s(first), finish_time=_s(finish), prompt_tokens=prompt,
            output_tokens=out, max_tokens=_int(aa.get("max_tokens")), finish_reason=fa.get("finish_reason"),
            queue_ms=_ms(arrival, alloc), ttft_ms=_ms(arrival, first), e2e_ms=_ms(arrival, finish),
            tpot_ms=(finish - first) / 1e6 / (out - 1) if None not in (finish, first, out) and out >= 2 else None,
            complete=int(bool(r.arrive and r.alloc and r.free))))
    return sorted(rows, key=lambda x: (x.arrival_time is None, x.arrival_time or 0, x.request_id))
