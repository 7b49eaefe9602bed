"""A service profile joined to an XLA capture of the same server: by engine step number, never by
timestamps. The service's batch table says which requests each step ran (the engine's step
numbers, as in the capture's manifest and its step annotations); its request table says when
each request arrived and got its first token, on the service profiler's clock. The capture
gives each step's device time, which `analysis/requests.py` shares out to those requests."""
from __future__ import annotations

import collections

from tpu_engine.events import StepRecord

from ..analysis.analysis import Analysis
from ..analysis.requests import Served, ServedRequest
from .events import find_event_files, read_events
from .tables import ServiceData, build


def load(path: str) -> ServiceData:
    """Every events file under `path` (a collection dir, or a dir above several)."""
    spans, markers, pids = [], [], {}
    for src, f in enumerate(find_event_files(path)):
        header, s, m = read_events(f, src)
        pids[src] = header.get("pid", src) if header else src
        spans += s
        markers += m
    return build(spans, markers, pids)


def served(data: ServiceData, a: Analysis | None = None) -> Served:
    """The service profile as the requests join reads it. With several server processes, step
    numbers repeat: the process whose steps ran the same requests as the capture's steps of the
    same numbers is the one captured."""
    by_src: dict[int, dict[int, tuple[str, ...]]] = collections.defaultdict(dict)
    for span in data.by[("Schedule", "batch")]:
        step, ids = span.attrs.get("step"), span.attrs.get("request_ids")
        if isinstance(step, int) and isinstance(ids, list):
            by_src[span.src][step] = tuple(str(r) for r in ids)
    src = max(by_src, key=lambda k: _agreement(by_src[k], a), default=None)
    steps = by_src.get(src, {})
    captured = {s.step for s in a.steps if s.source == "annotation"} if a is not None else set(steps)
    wanted = {r for step, ids in steps.items() if step in captured for r in ids}  # by step number only
    reqs = {r.request_id: ServedRequest(r.request_id, r.arrival_time, r.queue_ms, r.ttft_ms, r.tpot_ms, r.e2e_ms,
                                        r.output_tokens)
            for r in data.request if r.request_id in wanted}
    return Served(reqs, steps)


def _agreement(steps: dict[int, tuple[str, ...]], a: Analysis | None) -> int:
    if a is None:
        return len(steps)
    return sum(1 for s in a.steps if s.record and steps.get(s.step) == s.record.request_ids)


def coverage_note(data: Served, a: Analysis) -> str:
    """How many of the capture's steps the service profile knows, by step number."""
    numbered = [s for s in a.steps if s.source == "annotation"]
    known = sum(1 for s in numbered if s.step in data.step_requests)
    return (f"service profile joined by step number: {known} of the capture's {len(numbered)} steps are in its "
            f"batch table, {len(data.requests)} of its requests rode in them.")


def step_records(data: ServiceData) -> list[StepRecord]:
    """The engine's record of every step the service profile saw (its batch spans carry it);
    spans from events files written before they did are skipped."""
    out = []
    for span in data.by[("Schedule", "batch")]:
        try:
            out.append(StepRecord.from_json(span.attrs))
        except (ValueError, TypeError, KeyError):
            continue
    return out
