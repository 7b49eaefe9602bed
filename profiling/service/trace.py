"""The service profile as a Chrome trace (Perfetto, chrome://tracing), built from
`tables.build`'s data: a "Requests" process with one track per request (queued, prefill,
decode and http slices), an "Engine" process with the step, batch and forward tracks and the
KV-cache counters, and an "Other" process with one track per domain for custom symbols."""
from __future__ import annotations

from .tables import BATCH, DECODE, PREFILL, STEP, ServiceData

REQUESTS, ENGINE, OTHER = 1, 2, 3


def _slices(d: ServiceData, pre) -> list[tuple]:
    """(process, track, sort index, name, start, end, args) for every slice."""
    out = []
    for i, row in enumerate(d.request):
        rid = row.request_id
        r, track = d.requests[rid], (REQUESTS, rid, i)
        if r.arrival is not None and r.alloc:
            out.append((*track, "queued", r.arrival, r.alloc.start, {"request_id": rid}))
        if r.prefill:
            out.append((*track, "prefill", r.prefill.start, r.prefill.end, {"step": r.prefill.attrs.get("step")}))
            if r.decodes and r.free:
                out.append((*track, "decode", r.prefill.end, r.free.start,
                            {"decode_steps": r.decodes, "output_tokens": row.output_tokens}))
        if r.http:
            out.append((*track, "http", r.http.start, r.http.end, r.http.attrs))
    for key, kind, order in ((STEP, "step", 0), (BATCH, "batch", 1), (PREFILL, "forward", 2), (DECODE, "forward", 2)):
        for s in d.by[key]:
            name = s.attrs.get("phase", "batch") if kind == "batch" else s.name
            out.append((ENGINE, f"{pre(s.src)}{s.thread[2]} {kind}", order, str(name), s.start, s.end, s.attrs))
    for s in d.by[None]:
        out.append((OTHER, pre(s.src) + s.domain, 0, s.name, s.start, s.end, s.attrs))
    return sorted(out, key=lambda x: (x[4], -x[5]))


def _lay_out(slices: list[tuple], ts) -> list[dict]:
    """Complete events, each on the first lane of its track where it nests (a track whose
    slices overlap without nesting gets more lanes)."""
    events, lanes, tid_of = [], {}, {}
    for proc, track, order, name, start, end, args in slices:
        for n, stack in enumerate(lanes.setdefault((proc, track), [])):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or stack[-1] >= end:
                break
        else:  # overlaps without nesting on every lane so far: one more lane
            n, stack = len(lanes[(proc, track)]), []
            lanes[(proc, track)].append(stack)
        stack.append(end)
        if (proc, track, n) not in tid_of:
            tid = tid_of[(proc, track, n)] = len(tid_of) + 1
            events.append(dict(ph="M", name="thread_name", pid=proc, tid=tid, ts=0,
                               args={"name": track if n == 0 else f"{track} ({n + 1})"}))
            events.append(dict(ph="M", name="thread_sort_index", pid=proc, tid=tid, ts=0,
                               args={"sort_index": order * 100 + n}))
        events.append(dict(ph="X", name=name, cat=track, pid=proc, tid=tid_of[(proc, track, n)], ts=ts(start),
                           dur=(end - start) / 1e3, args=args))
    return events


def chrome_trace(d: ServiceData) -> dict:
    if not d.spans and not d.markers:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min([s.start for s in d.spans] + [m.t for m in d.markers])
    ts = lambda ns: (ns - t0) / 1e3  # noqa: E731
    pre = (lambda src: f"pid {d.pids[src]} ") if len(d.pids) > 1 else (lambda src: "")
    events = _lay_out(_slices(d, pre), ts)
    for m in d.markers:
        events.append(dict(ph="i", s="p", name=f"collection {m.name}", pid=ENGINE, tid=0, ts=ts(m.t),
                           args={"pid": d.pids[m.src]}))
    for when, src, slots, tokens in d.counters:
        events.append(dict(ph="C", name=f"{pre(src)}KV slots used", pid=ENGINE, tid=0, ts=ts(when), args={"slots": slots}))
        events.append(dict(ph="C", name=f"{pre(src)}KV tokens held", pid=ENGINE, tid=0, ts=ts(when), args={"tokens": tokens}))
    used = {e["pid"] for e in events} | {REQUESTS, ENGINE}
    for pid, name in ((REQUESTS, "Requests"), (ENGINE, "Engine"), (OTHER, "Other")):
        if pid in used:
            events.append(dict(ph="M", name="process_name", pid=pid, tid=0, ts=0, args={"name": name}))
            events.append(dict(ph="M", name="process_sort_index", pid=pid, tid=0, ts=0, args={"sort_index": pid}))
    return {"traceEvents": events, "displayTimeUnit": "ms"}
