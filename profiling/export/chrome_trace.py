"""Export an analysis as Chrome Trace Event Format (Perfetto UI and chrome://tracing open it).

Layout: one process per capture. Thread 1 holds the engine's steps as complete ("X") slices
named `prefill 12` / `decode 13` with their step record as arguments; thread 2 holds each
step's layers (module scopes) as slices spanning their first to last op; thread 3 the XLA
program executions (where the capture has them); one thread per op timeline (host XLA thread
or device) holds the ops. A counter track gives each step's batch size and longest KV length.
A second process, Requests, has one thread per request (its queued, prefill and decoding
slices, `timeline.py`) and a flow from the request to each step it rode in, so clicking a
request leads to its steps and their ops. Times are microseconds from the capture's first step.
"""
from __future__ import annotations

import gzip
import json

from ..analysis.analysis import Analysis, Step
from ..analysis.requests import Served
from ..runs import files as runfiles
from ..trace.ops import Op
from .timeline import request_slices

PID, REQUESTS_PID = 1, 2
STEPS_TID, LAYERS_TID, PROGRAMS_TID, FIRST_OP_TID = 1, 2, 3, 10
STEP_ARGS = ("bucket", "batch_size", "num_tokens", "padded_tokens", "kv_len_min", "kv_len_max")


def _step_events(step: Step, us) -> list[dict]:
    """The step's slice, its counters, its programs and its layers."""
    rec = step.record
    events = [{"ph": "X", "pid": PID, "tid": STEPS_TID, "name": f"{step.phase} {step.step}", "cat": step.phase,
               "ts": us(step.start_ns), "dur": round(step.duration_s * 1e6, 3),
               "args": {k: getattr(rec, k) for k in STEP_ARGS} if rec else {}}]
    if rec:
        events.append({"ph": "C", "pid": PID, "name": "batch", "ts": us(step.start_ns),
                       "args": {"batch_size": rec.batch_size, "kv_len_max": rec.kv_len_max}})
    spans: dict[str, list[float]] = {}
    for op in step.ops:
        lo_hi = spans.setdefault(op.layer, [op.start_ns, op.end_ns])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], op.start_ns), max(lo_hi[1], min(op.end_ns, step.end_ns))
    # Programs can overlap (devices), and layers run one after another: both are kept disjoint
    # so that slices nest cleanly.
    programs = [(a, b, "XLA program") for a, b in step.programs]
    layers = [(lo, hi, layer) for layer, (lo, hi) in spans.items()]
    return events + _disjoint(programs, step, PROGRAMS_TID, "program", us) + _disjoint(layers, step, LAYERS_TID,
                                                                                     "layer", us)


def _disjoint(intervals: list[tuple[float, float, str]], step: Step, tid: int, cat: str, us) -> list[dict]:
    """(start, end, name) intervals as slices within the step, each cut to begin where the
    previous one ended."""
    out, last_end = [], step.start_ns
    for a, b, name in sorted(intervals):
        a, b = max(a, last_end), min(b, step.end_ns)
        if b > a:
            out.append({"ph": "X", "pid": PID, "tid": tid, "name": name, "cat": cat, "ts": us(a),
                        "dur": round((b - a) / 1e3, 3), "args": {"step": step.step}})
            last_end = b
    return out


def nested(lane: list[Op]):
    """(op, start, end) for one timeline's ops, cut so that they nest: the tracer's clock can
    make neighbours overlap by a few ns, so a slice that starts inside another but ends after it
    starts at its end. Both trace exports lay ops out this way."""
    stack = []
    for op in sorted(lane, key=lambda o: (o.start_ns, -o.duration_ns)):
        start, end = op.start_ns, op.end_ns
        while stack and stack[-1] <= start:
            stack.pop()
        if stack and end > stack[-1]:
            start = stack[-1]
            while stack and stack[-1] <= start:
                stack.pop()
        stack.append(end)
        yield op, start, end


def _op_events(lane: list[Op], tid: int, us) -> tuple[list[dict], int]:
    """The lane's ops as slices; returns the events and how many were clipped to nest."""
    events, clipped = [], 0
    for op, start, end in nested(lane):
        clipped += start != op.start_ns
        events.append({"ph": "X", "pid": PID, "tid": tid, "name": op.name, "cat": op.category,
                       "ts": us(start), "dur": round((end - start) / 1e3, 3),
                       "args": {"scope": op.scope, "framework_op": op.framework_op, "module": op.module}})
    return events, clipped


def _request_events(a: Analysis, served: Served | None, us) -> list[dict]:
    """A thread per request with its slices; flows ("s" in the request's slice, "f" bound to
    the step's slice on the engine-steps thread)."""
    events, tids = [{"ph": "M", "pid": REQUESTS_PID, "name": "process_name", "args": {"name": "Requests"}}], {}
    for sl in request_slices(a, served):
        new = sl.request_id not in tids
        tid = tids.setdefault(sl.request_id, len(tids) + 1)
        if new:
            events.append({"ph": "M", "pid": REQUESTS_PID, "tid": tid, "name": "thread_name",
                           "args": {"name": f"request {sl.request_id}"}})
        events.append({"ph": "X", "pid": REQUESTS_PID, "tid": tid, "name": sl.name, "cat": "request",
                       "ts": us(sl.start_ns), "dur": round((sl.end_ns - sl.start_ns) / 1e3, 3),
                       "args": {"request_id": sl.request_id, "steps": [f.step.step for f in sl.flows]}})
        for f in sl.flows:
            inside = min(1e3, f.step.end_ns - f.step.start_ns) / 2  # strictly inside both slices
            events.append({"ph": "s", "id": f.id, "pid": REQUESTS_PID, "tid": tid, "name": "rode in", "cat": "flow",
                           "ts": us(f.at_ns + inside)})
            events.append({"ph": "f", "bp": "e", "id": f.id, "pid": PID, "tid": STEPS_TID, "name": "rode in",
                           "cat": "flow", "ts": us(f.step.start_ns + inside)})
    return events if tids else []


def build(a: Analysis, served: Served | None = None) -> dict:
    t0 = min((s.start_ns for s in a.steps), default=0.0)
    us = lambda ns: round((ns - t0) / 1e3, 3)  # noqa: E731
    events = [{"ph": "M", "pid": PID, "name": "process_name", "args": {"name": f"capture {a.run_dir}"}}]
    for tid, name in ((STEPS_TID, "engine steps"), (LAYERS_TID, "layers"), (PROGRAMS_TID, "XLA programs")):
        events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": name}})
    lanes: dict[str, list[Op]] = {}
    for step in a.steps:
        events += _step_events(step, us)
        for op in step.ops:
            lanes.setdefault(op.timeline or op.device, []).append(op)
    clipped = 0
    for i, (lane, lane_ops) in enumerate(lanes.items()):
        more, n = _op_events(lane_ops, FIRST_OP_TID + i, us)
        events += more + [{"ph": "M", "pid": PID, "tid": FIRST_OP_TID + i, "name": "thread_name",
                           "args": {"name": lane}}]
        clipped += n
    events += _request_events(a, served, us)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"xplane": a.xplane, "time_origin_ns": t0, "op_slices_clipped_to_nest": clipped}}


def write(a: Analysis, path: str, out: runfiles.Outputs | None = None, served: Served | None = None) -> str:
    data = json.dumps(build(a, served)).encode()
    opener = gzip.open if path.endswith(".gz") else open  # by the final name, not the temp file's

    def dump(tmp: str) -> None:
        with opener(tmp, "wb") as f:
            f.write(data)
    return (out or runfiles.Outputs()).write(path, dump)
