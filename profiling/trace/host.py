"""CPU captures: the XLA op executions on the host's threads, the tasks XLA:CPU's thread pool
ran for them, and the program runs.

XLA:CPU runs a program's thunks on one thread (the caller's, `tf_XLAPjRtCpuClient`, or a pool
thread that continues the program) and splits a large op into tasks on its intra-op pool
(`tf_XLAEigen…` threads). An op event times only the thread that started the op. The profiler
marks every pool task with flows: a `ThreadpoolListener::Record` instant where the task is
scheduled (flow id in stat `_p`) and a `StartRegion` (the same id in `_c`) ... `StopRegion`
pair on the worker that runs it. `threadpool.attribute` gives those tasks to their ops.
"""
from __future__ import annotations

import dataclasses

from . import xspace

RECORD, START, STOP = ("ThreadpoolListener::Record", "ThreadpoolListener::StartRegion",
                       "ThreadpoolListener::StopRegion")
WAIT = "ThunkExecutor::Execute (wait for completion)"  # ends one whole program run
EXECUTE = "ThunkExecutor::Execute"                      # the executor running thunks on a thread


@dataclasses.dataclass(slots=True)
class OpEvent:
    """One op event as recorded: which instruction, where and when."""
    module: str
    program: object      # program_id stat (None when absent)
    name: str
    timeline: str
    start_ns: float
    duration_ns: float


@dataclasses.dataclass(slots=True)
class PoolTask:
    """A thread-pool task: scheduled at `scheduled_ns` on `scheduled_on`, run on `timeline`
    from `start_ns` to `end_ns` (no region when it never started inside the capture)."""
    flow: int
    scheduled_on: str = ""
    scheduled_ns: float = -1.0
    timeline: str = ""
    start_ns: float = -1.0
    end_ns: float = -1.0


@dataclasses.dataclass
class HostTrace:
    ops: list[OpEvent]
    tasks: list[PoolTask]                 # tasks with both a Record and a region
    programs: list[tuple[float, float]]   # (start, end) of every program run
    marked: list = dataclasses.field(default_factory=list)  # (plane, line, event, base ps) of `mark` events


def _stat_ids(plane) -> dict[str, int]:
    return {m.name: k for k, m in plane.stat_metadata.items()}


def _flow(ev, k_p, k_c):
    for st in ev.stats:
        if st.metadata_id == k_p or st.metadata_id == k_c:
            return st.uint64_value or st.int64_value
    return None


def read(space, op_names: set[str], pick=None) -> HostTrace:
    """Op events (events with an `hlo_op` stat; when `op_names` is given, only events named
    after one of those instructions are decoded), pool tasks and program runs of every
    `/host:CPU` plane. `pick(plane, event metadata name)`, when given, picks events to hand
    back whole (`marked`), read in the same pass: the step finder's host marks."""
    origin_ps = xspace.origin_ps(space)
    ops, tasks, programs, marked = [], {}, [], []
    for plane in space.planes_named("/host:CPU"):
        smeta, emeta, ids = plane.stat_metadata, plane.event_metadata, _stat_ids(plane)
        k_op, k_mod, k_prog, k_p, k_c = (ids.get(n) for n in ("hlo_op", "hlo_module", "program_id", "_p", "_c"))
        marks = {k: m.name for k, m in emeta.items() if m.name in (RECORD, START, STOP, WAIT, EXECUTE)}
        picked = {k for k, m in emeta.items() if m.name not in op_names and pick(plane, m.name)} if pick else set()
        keep = set(marks) | picked | ({k for k, m in emeta.items() if m.name in op_names} if op_names
                                      else {k for k, m in emeta.items() if not m.name.startswith("ThreadpoolListener::")})
        state: dict[int, list] = {}  # line index -> [open task, first run since the last program]
        for index, line in plane.iter_line_chunks(keep=keep, chunk=20000):  # a long line comes in pieces
            lname, base_ps = line.name, origin_ps + line.timestamp_ns * 1000
            open_task, first_run = state.get(index, (None, None))
            for ev in sorted(line.events, key=lambda e: e.offset_ps):
                if ev.metadata_id in picked:
                    marked.append((plane, lname, ev, base_ps))
                    continue
                start, dur = (base_ps + ev.offset_ps) / 1000, ev.duration_ps / 1000
                mark = marks.get(ev.metadata_id)
                flow = _flow(ev, k_p, k_c) if mark in (RECORD, START) else None
                if mark == RECORD and flow is not None:
                    t = tasks.setdefault(flow, PoolTask(flow))
                    t.scheduled_on, t.scheduled_ns = lname, start
                elif mark == START and flow is not None:
                    open_task = tasks.setdefault(flow, PoolTask(flow))
                    open_task.timeline, open_task.start_ns = lname, start
                elif mark == STOP and open_task is not None:
                    open_task.end_ns, open_task = start, None
                elif mark == WAIT:
                    programs.append((start if first_run is None else first_run, start + dur))
                    first_run = None
                elif mark == EXECUTE:
                    first_run = start if first_run is None else first_run
                elif k_op is not None:
                    op = mod = prog = None
                    for st in ev.stats:
                        if st.metadata_id == k_op:
                            op = xspace.stat_value(st, smeta)
                        elif st.metadata_id == k_mod:
                            mod = xspace.stat_value(st, smeta)
                        elif st.metadata_id == k_prog:
                            prog = xspace.stat_value(st, smeta)
                    if op is None:
                        continue
                    ops.append(OpEvent(str(mod or ""), prog, str(op), lname, start, dur))
                    first_run = start if first_run is None else first_run
            state[index] = [open_task, first_run]
    done = [t for t in tasks.values() if t.scheduled_ns >= 0 and t.end_ns > t.start_ns >= 0]
    return HostTrace(ops, done, sorted(programs), marked)
