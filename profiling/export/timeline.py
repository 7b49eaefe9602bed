"""The requests of one capture laid on its timeline, for both trace exports (Chrome JSON and
Perfetto's protobuf): each request's queued, prefill and decoding slices, and one flow from the
request to every step it rode in (which steps: `analysis/requests.py`, the one step model).

Arrivals are on the engine's wall clock (its manifest); they are placed on the trace's clock by
the offset between the two read off the steps themselves (each step's record and its step
annotation), never by matching requests to steps on time."""
from __future__ import annotations

import dataclasses
import statistics

from ..analysis.analysis import Analysis, Step
from ..analysis.requests import Served, shares


@dataclasses.dataclass(frozen=True)
class Flow:
    id: int
    step: Step
    at_ns: float           # where it leaves the request's slice (the step's start)


@dataclasses.dataclass(frozen=True)
class RequestSlice:
    request_id: str
    name: str              # queued, prefill or decoding
    start_ns: float
    end_ns: float
    flows: tuple[Flow, ...] = ()


def clock_offset_ns(a: Analysis) -> float | None:
    """Trace ns minus engine wall-clock ns, from the steps that have both."""
    diffs = [s.start_ns - s.record.wall_start * 1e9 for s in a.steps if s.record]
    return statistics.median(diffs) if diffs else None


def request_slices(a: Analysis, served: Served | None = None) -> list[RequestSlice]:
    """Every request's slices, in the order requests were first seen; flow ids from 1."""
    own: dict[str, list] = {}
    for s in shares(a, served):
        own.setdefault(s.request_id, []).append(s)
    offset = clock_offset_ns(a)
    out, next_id = [], 1
    for rid, ss in own.items():
        pre = [s for s in ss if s.phase == "prefill"]
        dec = [s for s in ss if s.phase == "decode"]
        rec = pre[0].step.record if pre else None
        arrivals = dict(zip(rec.request_ids, rec.arrivals)) if rec and rec.arrivals else {}
        if pre and rid in arrivals and offset is not None:
            start = arrivals[rid] * 1e9 + offset
            if start < pre[0].step.start_ns:
                out.append(RequestSlice(rid, "queued", start, pre[0].step.start_ns))
        for name, group in (("prefill", pre), ("decoding", dec)):
            if not group:
                continue
            flows = tuple(Flow(next_id + i, s.step, s.step.start_ns) for i, s in enumerate(group))
            next_id += len(flows)
            out.append(RequestSlice(rid, name, group[0].step.start_ns, group[-1].step.end_ns, flows))
    return out
