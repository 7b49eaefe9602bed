"""Read the TPU profiler's Chrome-trace JSON (`*.trace.json`, `*.trace.json.gz`): the form
XProf's trace viewer serves and some engines save instead of the `.xplane.pb` (XProf itself
cannot read it back).

The JSON keeps what the analysis needs: one process per plane (`/device:TPU:0`, `/host:CPU`),
one thread per line (`XLA Ops`, `XLA Modules`, host threads), and complete ("X") events whose
`args` carry an op's `hlo_category`, `long_name` (its HLO text), `tf_op` (the JAX op_name, with
the model's scopes), `model_flops`, `bytes_accessed` and `source`/`source_stack`. There is no
embedded HLO, so an op's opcode comes from its HLO text and its scope from `tf_op`. Times are
microseconds (`ts`, `dur`) whatever `displayTimeUnit` says, counted from the capture's start.
"""
from __future__ import annotations

import bisect
import gzip
import json
import re
import zlib

from ..runs.files import RunFileError, read_bytes
from . import sources
from .categories import UNSCOPED, categorize, primitive_of, scope_of
from .ops import Op, Run, module_name, set_self_times

_WORD = re.compile(r"[a-z][\w-]*")


def _load(path: str) -> dict:
    data = read_bytes(path)
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        doc = json.loads(data)
    except (OSError, EOFError, zlib.error):
        raise RunFileError(f"{path} is not a readable gzip file (damaged or cut short).") from None
    except (ValueError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise RunFileError(f"{path} is not a valid Chrome trace JSON ({why}).") from None
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc
    if not isinstance(events, list):
        raise RunFileError(f"{path} is not a Chrome trace (no traceEvents list).")
    return {"traceEvents": events}


def opcode_of(long_name: str, name: str) -> str:
    """The opcode in an op's HLO text (`%x = (f32[..], ...) custom-call(...)`): the word after
    the (possibly tuple) shape, before the operands' parenthesis."""
    text = long_name.split(" = ", 1)[1] if " = " in long_name else ""
    end = 0
    if text.startswith("("):  # a tuple shape: skip to its closing parenthesis
        depth = 0
        for end, ch in enumerate(text):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
    rest = text[end:].split(" ", 1)[1] if " " in text[end:] else ""
    opcode = rest.split("(", 1)[0].strip()
    return opcode if _WORD.fullmatch(opcode) else name.split(".")[0]


def model_frame(source: str, stack: str) -> str:
    """`qwen2.py:228`: the model's line of code from an op's `source_stack` (innermost frame
    first, `path:line:column`), else from its `source`."""
    frames = []
    for frame in stack.splitlines():
        parts = frame.rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            frames.append((parts[0], int(parts[1])))
    if not frames and ":" in source:
        head, _, line = source.rpartition(":")
        frames = [(head, int(line))] if line.isdigit() else []
    return sources.model_frame(frames)


def _op(ev: dict, device: str, lane: str, module: str) -> Op:
    args = ev.get("args") or {}
    name = str(ev.get("name", ""))
    tf_op = str(args.get("tf_op", "")).rstrip(":")
    opcode = opcode_of(str(args.get("long_name", "")), name)
    scope = scope_of(tf_op) if tf_op else UNSCOPED
    fw = primitive_of(tf_op.split(";")[0]).rstrip(":") or ""
    start = float(ev.get("ts", 0)) * 1e3
    return Op(module, name, start, float(ev.get("dur", 0)) * 1e3, scope,
              categorize(opcode, (), fw, scope, str(args.get("hlo_category", "")).lower(),
                         tf_op if opcode == "custom-call" else ""),
              opcode, fw, device, _number(args.get("model_flops")), _number(args.get("bytes_accessed")),
              timeline=f"{device} {lane}",
              source=model_frame(str(args.get("source", "")), str(args.get("source_stack", ""))))


def _number(v) -> float:
    try:
        return float(v or 0)
    except (TypeError, ValueError):
        return 0.0


XPROF_EVENT_CAP = 1_000_000  # XProf's trace viewer writes at most this many events


def read(path: str):
    """(ops, program runs, host events as (process, thread, event), facts) of a Chrome-trace
    JSON; facts: how many events it holds, and how many host events are XLA:CPU op executions
    (which this reader leaves to the `.xplane.pb`: the JSON has no HLO to scope them)."""
    events = _load(path)["traceEvents"]
    procs, threads = {}, {}
    for ev in events:
        if isinstance(ev, dict) and ev.get("ph") == "M":
            args = ev.get("args") or {}
            if ev.get("name") == "process_name":
                procs[ev.get("pid")] = str(args.get("name", ""))
            elif ev.get("name") == "thread_name":
                threads[(ev.get("pid"), ev.get("tid"))] = str(args.get("name", ""))
    runs, op_events, host, cpu_ops = [], [], [], 0
    for ev in events:
        if not isinstance(ev, dict) or ev.get("ph") != "X":
            continue
        proc, lane = procs.get(ev.get("pid"), ""), threads.get((ev.get("pid"), ev.get("tid")), "")
        if proc.startswith("/device:"):
            if lane == "XLA Modules":
                start = float(ev.get("ts", 0)) * 1e3
                runs.append(Run(module_name(str(ev.get("name", ""))), proc, start,
                                start + float(ev.get("dur", 0)) * 1e3))
            elif lane == "XLA Ops" or (lane.startswith("Stream #") and "hlo_op" in (ev.get("args") or {})):
                op_events.append((proc, lane, ev))
        elif proc.startswith("/host:"):
            if "hlo_op" in (ev.get("args") or {}):
                cpu_ops += 1
            else:
                host.append((proc, lane, ev))
    return _ops(op_events, runs), runs, host, {"events": len(events), "cpu_ops": cpu_ops}


def _ops(op_events, runs: list[Run]) -> list[Op]:
    """Each op in the program run that holds it on its device; self times per line."""
    by_device: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.start_ns):
        by_device.setdefault(r.device, []).append(r)
    starts = {d: [r.start_ns for r in rs] for d, rs in by_device.items()}
    lines: dict[tuple[str, str], list[Op]] = {}
    for device, lane, ev in op_events:
        i = bisect.bisect_right(starts.get(device, []), float(ev.get("ts", 0)) * 1e3 + 1) - 1
        module = by_device[device][i].module if i >= 0 else ""
        lines.setdefault((device, lane), []).append(_op(ev, device, lane, module))
    out = []
    for line_ops in lines.values():
        set_self_times(line_ops)
        out += line_ops
    return sorted(out, key=lambda o: o.start_ns)
