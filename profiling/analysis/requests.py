"""Each request's share of the device time of the steps it rode in, and its latency taken apart.

A step's time is split three ways (as in the phase table): busy (an XLA program running), of
which the padded share is padding (the compiled shape's tokens beyond the real ones), and host
(the rest). Each part is shared out to the step's requests by their tokens in it (a packed
prefill) or equally (decode, or where a capture does not say each request's tokens), so the
requests' shares add up to the steps' time. Which requests a step ran comes from the one step
model (`analysis.Step`): our manifest's record, the request ids an engine tags on its step
annotation (tpu-inference's `request_id1`...), or a service profile joined by step number
(`Served`, built by `service/join.py`). Timestamps never join a request to a step.

TTFT = queue + the request's prefill step, which is its own share (device, padding, host) plus
the time the step spent on the prompts packed with it (`batched`); `other` is what the clocks
leave (the engine's wall time against the trace's). TPOT is taken apart the same way over its
decode steps, `other` there being the steps it sat out (others' prefills) and clock gaps.
"""
from __future__ import annotations

import dataclasses
import re
import statistics

from ..table import Table, hidden, percentile
from .analysis import Analysis, Step

SHOWN_BEHIND = 3  # prefills a queued request's row names (the first it waited behind)
_ID_ARG = re.compile(r"^(?:request_?ids?|req_?ids?)\d*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ServedRequest:
    """What a service profile measured of one request (times on its own clock, ms)."""
    request_id: str
    arrival_s: float | None
    queue_ms: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    output_tokens: int | None


@dataclasses.dataclass(frozen=True)
class Served:
    """A service profile to join: its requests, and which requests each engine step ran (by
    step number, from its batch table)."""
    requests: dict[str, ServedRequest]
    step_requests: dict[int, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class Share:
    """One request's part of one step (ms)."""
    request_id: str
    step: Step
    phase: str            # prefill or decode, for this request
    device_ms: float      # busy time less padding, its part
    padding_ms: float
    host_ms: float
    tokens: int | None

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.padding_ms + self.host_ms


def step_requests(step: Step, served: Served | None = None) -> list[tuple[str, int | None]]:
    """(request id, its tokens in the step) for the requests a step ran: from a joined service
    profile by step number, else our manifest, else the ids tagged on the step annotation."""
    rec = step.record
    tokens = dict(zip(rec.request_ids, rec.request_tokens)) if rec and rec.request_tokens else {}
    if served is not None and step.step in served.step_requests and step.source == "annotation":
        return [(r, tokens.get(r)) for r in served.step_requests[step.step]]
    if rec is not None:
        return [(r, tokens.get(r)) for r in rec.request_ids]
    ids = []
    for name, value in step.args:
        if _ID_ARG.match(name):
            ids += [v for v in re.split(r"[,\s]+", str(value)) if v]
    return [(r, None) for r in dict.fromkeys(ids)]


def token_weights(tokens: list[int | None]) -> list[float]:
    """Each request's fraction of a step: by its tokens where every request's are known (a
    packed prefill), else equal (decode, or a capture that does not say)."""
    w = tokens if tokens and all(tokens) else [1] * len(tokens)
    total = sum(w)
    return [x / total for x in w]


def shares(a: Analysis, served: Served | None = None) -> list[Share]:
    """Every request's part of every step; computed once per analysis (and service profile)."""
    key = ("request_shares", id(served))
    if key not in a.derived:
        a.derived[key] = _shares(a, served)
    return a.derived[key]


def _shares(a: Analysis, served: Served | None) -> list[Share]:
    out, seen = [], set()
    for step in sorted(a.steps, key=lambda s: s.start_ns):
        reqs = step_requests(step, served)
        if not reqs:
            continue
        busy, total = step.busy_s() * 1e3, step.duration_s * 1e3
        rec = step.record
        pad = 1 - rec.num_tokens / rec.padded_tokens if rec and rec.padded_tokens else 0.0
        for (rid, tokens), f in zip(reqs, token_weights([t for _, t in reqs])):
            phase = step.phase if step.phase in ("prefill", "decode") else ("decode" if rid in seen else "prefill")
            out.append(Share(rid, step, phase, busy * (1 - pad) * f, busy * pad * f, (total - busy) * f, tokens))
            seen.add(rid)
    return out


@dataclasses.dataclass(frozen=True)
class RequestRow:
    """One request: its device time by phase, host and padding time (its shares of its steps),
    and its TTFT and TPOT taken apart (ms)."""
    request_id: str
    steps: int             # captured steps it rode in
    prefill_step: int | None
    queue_ms: float | None
    ttft_ms: float | None
    prefill_ms: float      # device time of its prefill, less padding (TTFT's device part)
    ttft_padding_ms: float | None  # its prefill step's padding and host time, its part
    ttft_host_ms: float | None
    ttft_batched_ms: float | None  # of its prefill step: the time spent on the prompts packed with it
    ttft_other_ms: float | None
    decode_ms: float
    host_ms: float         # over all its steps
    padding_ms: float
    tpot_ms: float | None
    tpot_device_ms: float | None
    tpot_host_ms: float | None
    tpot_padding_ms: float | None
    tpot_batched_ms: float | None
    tpot_other_ms: float | None
    waited_behind: str     # the steps that ran between its arrival and its prefill
    tokens: int | None = hidden()         # its prompt tokens (prefill)
    output_tokens: int | None = hidden()


def _arrival(shares_of: list[Share]) -> float | None:
    """Its arrival on the engine's clock (our manifest's prefill record)."""
    for s in shares_of:
        rec = s.step.record
        if s.phase == "prefill" and rec and rec.arrivals:
            return dict(zip(rec.request_ids, rec.arrivals)).get(s.request_id)
    return None


def _waited(a: Analysis, arrival: float | None, prefill: Step | None) -> str:
    """The captured steps that began between its arrival and its prefill (engine clock): each
    prefill it waited behind, and the decode steps as one count."""
    if arrival is None or prefill is None or prefill.record is None:
        return ""
    behind = [s for s in a.steps if s.record and arrival <= s.record.wall_start < prefill.record.wall_start]
    prefills = [s for s in behind if s.phase == "prefill"]
    out = [f"prefill {s.step} ({s.record.batch_size} req, {s.record.num_tokens} tok, {s.duration_s * 1e3:.1f} ms)"
           for s in prefills[:SHOWN_BEHIND]]
    more = prefills[SHOWN_BEHIND:]
    if more:
        out.append(f"{len(more)} more prefill(s) ({sum(s.duration_s for s in more) * 1e3:.1f} ms)")
    dec = [s for s in behind if s.phase != "prefill"]
    if dec:
        out.append(f"{len(dec)} decode step(s) ({sum(s.duration_s for s in dec) * 1e3:.1f} ms)")
    return ", ".join(out)


def _tpot(own: list[Share], first: Step | None, served_req: ServedRequest | None) -> dict:
    dec = [s for s in own if s.phase == "decode"]
    if not dec or first is None or first.record is None or dec[-1].step.record is None:
        return {}
    n = len(dec)
    span_ms = (dec[-1].step.record.wall_end - first.record.wall_end) * 1e3
    tpot = served_req.tpot_ms if served_req and served_req.tpot_ms is not None else span_ms / n
    device, host, pad = (sum(getattr(s, f) for s in dec) / n for f in ("device_ms", "host_ms", "padding_ms"))
    batched = sum(s.step.duration_s * 1e3 - s.total_ms for s in dec) / n
    return dict(tpot_ms=tpot, tpot_device_ms=device, tpot_host_ms=host, tpot_padding_ms=pad,
                tpot_batched_ms=batched, tpot_other_ms=tpot - device - host - pad - batched)


def _row(a: Analysis, rid: str, own: list[Share], served_req: ServedRequest | None) -> RequestRow:
    pre = next((s for s in own if s.phase == "prefill"), None)
    first = pre.step if pre else None
    arrival = _arrival(own)
    queue = ttft = batched = other = None
    if served_req is not None:
        queue, ttft = served_req.queue_ms, served_req.ttft_ms
    elif pre and arrival is not None and first.record:
        queue, ttft = (first.record.wall_start - arrival) * 1e3, (first.record.wall_end - arrival) * 1e3
    if pre:
        batched = first.duration_s * 1e3 - pre.total_ms
        if ttft is not None and queue is not None:
            other = ttft - queue - first.duration_s * 1e3
    return RequestRow(
        request_id=rid, steps=len(own), prefill_step=first.step if first else None, queue_ms=queue, ttft_ms=ttft,
        prefill_ms=sum(s.device_ms for s in own if s.phase == "prefill"),
        ttft_padding_ms=pre.padding_ms if pre else None, ttft_host_ms=pre.host_ms if pre else None,
        ttft_batched_ms=batched, ttft_other_ms=other,
        decode_ms=sum(s.device_ms for s in own if s.phase == "decode"), host_ms=sum(s.host_ms for s in own),
        padding_ms=sum(s.padding_ms for s in own),
        **{k: None for k in ("tpot_ms", "tpot_device_ms", "tpot_host_ms", "tpot_padding_ms", "tpot_batched_ms",
                             "tpot_other_ms")} | _tpot(own, first, served_req),
        waited_behind=_waited(a, arrival, first), tokens=pre.tokens if pre else None,
        output_tokens=served_req.output_tokens if served_req else None)


def request_table(a: Analysis, served: Served | None = None) -> Table[RequestRow]:
    """One row per request the capture's steps ran, in the order they were first seen."""
    own: dict[str, list[Share]] = {}
    for s in shares(a, served):
        own.setdefault(s.request_id, []).append(s)
    served_reqs = served.requests if served else {}
    rows = [_row(a, rid, ss, served_reqs.get(rid)) for rid, ss in own.items()]
    return Table("Requests (ms; device time less padding, a step's share by tokens or equally)", RequestRow, rows)


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How much of the capture's device time the requests account for."""
    device_ms: float        # busy time of every step
    attributed_ms: float    # of which in steps that name their requests
    requests: int

    @property
    def pct(self) -> float | None:
        return 100 * self.attributed_ms / self.device_ms if self.device_ms else None


def coverage(a: Analysis, served: Served | None = None) -> Coverage:
    total = sum(s.busy_s() for s in a.steps) * 1e3
    got = shares(a, served)
    return Coverage(total, sum(s.device_ms + s.padding_ms for s in got), len({s.request_id for s in got}))


@dataclasses.dataclass(frozen=True)
class PercentileRow:
    """One statistic over the requests: TTFT (or TPOT) and its parts (ms)."""
    stat: str
    count: int
    total_ms: float | None
    queue_ms: float | None
    device_ms: float | None
    padding_ms: float | None
    host_ms: float | None
    batched_ms: float | None
    other_ms: float | None


# TTFT or TPOT, then its parts in PercentileRow's order (queue, device, padding, host, batched, other)
_PARTS = {"ttft": ("ttft_ms", "queue_ms", "prefill_ms", "ttft_padding_ms", "ttft_host_ms", "ttft_batched_ms",
                   "ttft_other_ms"),
          "tpot": ("tpot_ms", None, "tpot_device_ms", "tpot_padding_ms", "tpot_host_ms", "tpot_batched_ms",
                   "tpot_other_ms")}


def percentiles(table: Table[RequestRow], which: str = "ttft") -> Table[PercentileRow]:
    """p50, p99 and mean of TTFT (or TPOT) and of each of its parts, over the requests that
    have it (each column's statistic on its own)."""
    fields = _PARTS[which]
    rows = [r for r in table.rows if getattr(r, fields[0]) is not None]
    cols = [[getattr(r, f) for r in rows if getattr(r, f) is not None] if f else [] for f in fields]
    out = []
    for stat, fn in (("p50", lambda v: percentile(v, 50)), ("p99", lambda v: percentile(v, 99)),
                     ("mean", statistics.fmean)):
        out.append(PercentileRow(stat, len(rows), *[fn(c) if c else None for c in cols]))
    what = "TTFT = queue + device + padding + host + batched + other" if which == "ttft" else \
        "TPOT = device + padding + host + batched + other"
    return Table(f"{what} (ms; each column's own percentile)", PercentileRow, out)
