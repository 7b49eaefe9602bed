"""Export an analysis as Chrome Trace Event Format (Perfetto UI and chrome://tracing open it).

Layout: one process per capture. Thread 1 holds the engine's steps as complete ("X") slices
named `prefill 12` / `decode 13`; thread 2 holds each step's layers (module scopes) as slices
spanning their first to last op; thread 3 the XLA program executions (where the capture has
them); one thread per op timeline (host XLA thread or device) holds the ops. A counter track gives each step's batch size and longest KV length. Times
are microseconds from the capture's first step.
"""
from __future__ import annotations

import gzip
import json

PID = 1
STEPS_TID, LAYERS_TID, PROGRAMS_TID, FIRST_OP_TID = 1, 2, 3, 10


def build(analysis) -> dict:
    t0 = min((s.start_ns for s in analysis.steps), default=0.0)
    us = lambda ns: round((ns - t0) / 1e3, 3)  # noqa: E731
    events = [
        {"ph": "M", "pid": PID, "name": "process_name", "args": {"name": f"capture {analysis.run_dir}"}},
        {"ph": "M", "pid": PID, "tid": STEPS_TID, "name": "thread_name", "args": {"name": "engine steps"}},
        {"ph": "M", "pid": PID, "tid": LAYERS_TID, "name": "thread_name", "args": {"name": "layers"}},
        {"ph": "M", "pid": PID, "tid": PROGRAMS_TID, "name": "thread_name", "args": {"name": "XLA programs"}},
    ]
    lanes: dict[str, int] = {}
    lane_ops: dict[int, list] = {}
    for step in analysis.steps:
        rec = step.record or {}
        events.append({"ph": "X", "pid": PID, "tid": STEPS_TID, "name": f"{step.phase} {step.step}",
                       "cat": step.phase, "ts": us(step.start_ns), "dur": round(step.duration_s * 1e6, 3),
                       "args": {k: rec[k] for k in ("bucket", "batch_size", "num_tokens", "padded_tokens",
                                                      "kv_len_min", "kv_len_max") if k in rec}})
        if rec:
            events.append({"ph": "C", "pid": PID, "name": "batch", "ts": us(step.start_ns),
                           "args": {"batch_size": rec["batch_size"], "kv_len_max": rec["kv_len_max"]}})
        spans: dict[str, list[float]] = {}
        for op in step.ops:
            lo_hi = spans.setdefault(op.layer, [op.start_ns, op.end_ns])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], op.start_ns), max(lo_hi[1], min(op.end_ns, step.end_ns))
            lane = op.timeline or op.device
            lane_ops.setdefault(lanes.setdefault(lane, FIRST_OP_TID + len(lanes)), []).append(op)
        last_end = step.start_ns
        for a, b in sorted(step.programs):  # programs can overlap (devices): keep them disjoint
            a, b = max(a, last_end, step.start_ns), min(b, step.end_ns)
            if b > a:
                events.append({"ph": "X", "pid": PID, "tid": PROGRAMS_TID, "name": "XLA program",
                               "cat": "program", "ts": us(a), "dur": round((b - a) / 1e3, 3),
                               "args": {"step": step.step}})
                last_end = b
        # Layers run one after another within a step; clip overlaps so slices nest cleanly.
        last_end = step.start_ns
        for layer, (lo, hi) in sorted(spans.items(), key=lambda kv: kv[1][0]):
            lo = max(lo, last_end)
            if hi <= lo:
                continue
            events.append({"ph": "X", "pid": PID, "tid": LAYERS_TID, "name": layer, "cat": "layer",
                           "ts": us(lo), "dur": round((hi - lo) / 1e3, 3), "args": {"step": step.step}})
            last_end = hi
    clipped = 0
    for tid, lane in lane_ops.items():
        # Slices on one thread must nest; the tracer's clock can make neighbours overlap by a
        # few ns, so a slice that starts inside another but ends after it starts at its end.
        stack: list[float] = []
        for op in sorted(lane, key=lambda o: (o.start_ns, -o.duration_ns)):
            start, end = op.start_ns, op.end_ns
            while stack and stack[-1] <= start:
                stack.pop()
            if stack and end > stack[-1]:
                start, clipped = stack[-1], clipped + 1
                while stack and stack[-1] <= start:
                    stack.pop()
            stack.append(end)
            events.append({"ph": "X", "pid": PID, "tid": tid, "name": op.name, "cat": op.category,
                           "ts": us(start), "dur": round((end - start) / 1e3, 3),
                           "args": {"scope": op.scope, "framework_op": op.framework_op, "module": op.module}})
    for lane, tid in lanes.items():
        events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": lane}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"xplane": analysis.xplane, "time_origin_ns": t0,
                          "op_slices_clipped_to_nest": clipped}}


def write(analysis, path: str) -> None:
    data = json.dumps(build(analysis)).encode()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)
