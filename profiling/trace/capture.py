"""One capture, whatever its file format: its XLA op executions, program runs, the host events
that can mark engine steps, and the HLO programs it embeds. `load` reads an `.xplane.pb`
(trace/xspace.py) or the TPU profiler's Chrome-trace JSON (trace/chrome_json.py) into it, so
the analysis has one input.

Marks are the few host events a step finder needs, kept whole (their arguments too: an
engine's step annotation may carry request ids): step annotations (a TraceMe with a
`step_num`, which is how XProf groups steps), an engine's own step functions as the Python
tracer records them (`$core.py:985 _process_engine_step`), and program dispatches
(`PjitFunction(step_fun)`, which say which host step launched a device run)."""
from __future__ import annotations

import dataclasses
import re

from . import hlo, xspace
from . import ops as ops_mod
from .ops import Op, Run

_INTERNAL_STATS = ("_r", "_c", "_p", "_ct", "_pt", "step_num", "group_id")
# Host lines that only run XLA's own work (CPU op events, thread pools, runtime queues): no
# step annotation lives there, and CPU captures hold most of their events on them.
_WORKER_LINES = ("tf_XLA", "tf_PjRt", "tf_pjrt", "XLAEigen", "py_xla_execute", "pjrt-", "tfrt-",
                 "EventFDAsyncWorker", "futex-", "switchto-")
_RUNTIME = ("ThreadpoolListener::", "ThunkExecutor::", "end: ")
# (an engine's own TraceMe may add a description: tpu-inference's `execute_model: 4 reqs, 96 toks`)
ENGINE_FUNCTIONS = re.compile(r"(?:^|\s)(_process_engine_step|execute_model|prefill|generate|insert|"
                              r"forward_extend|forward_decode|forward_batch_generation)(?:: .*)?$")


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    """A host event that can mark steps."""
    name: str          # as recorded: `decode`, `$core.py:985 _process_engine_step`, `PjitFunction(f)`
    start_ns: float
    end_ns: float
    thread: str
    step_num: int | None = None
    args: tuple[tuple[str, str], ...] = ()   # the event's other arguments, as recorded

    @property
    def function(self) -> str:
        """The Python function a tracer event names (`_process_engine_step`), or an annotation
        named after one (`execute_model: 4 reqs, 96 toks`), else the name."""
        if self.name.startswith("$"):
            return self.name.rsplit(" ", 1)[-1]
        head = self.name.split(": ", 1)[0]
        return head if head != self.name and head.isidentifier() else self.name

    @property
    def file(self) -> str:
        """`core.py` for `$core.py:985 _process_engine_step`; '' for other events."""
        return self.name[1:].split(":", 1)[0] if self.name.startswith("$") else ""


@dataclasses.dataclass
class Capture:
    path: str
    format: str                            # "xplane" or "chrome-json"
    ops: list[Op]
    programs: list[tuple[float, float]]    # program run spans (busy time)
    runs: list[Run]                        # device program runs with their names (none on CPU)
    marks: list[Mark]
    modules: dict[str, hlo.Module]         # embedded HLO by program key (none in JSON)
    planes: tuple[str, ...]                # plane (process) names
    device_lines: frozenset[str]           # line names on device planes (`XLA Ops`, `TensorFlow Ops`...)
    space: xspace.Space | None = None
    runs_timed: bool = True                # runs are the device's own (`XLA Modules`), not made from ops
    events: int = 0                        # trace JSON: events it holds
    unread_cpu_ops: int = 0                # trace JSON: XLA:CPU op events on host threads (not read)

    @property
    def device_runs(self) -> list[Run]:
        """The runs a device recorded itself: what busy and idle time are measured against."""
        return [r for r in self.runs if r.device.startswith("/device:")] if self.runs_timed else []


def _candidate(name: str) -> bool:
    if name.startswith("$"):
        return ENGINE_FUNCTIONS.search(name) is not None
    return not name.startswith(_RUNTIME)


def _picker(plane, annotated: dict):
    """Which of a host plane's events to decode as marks: dispatches and engine functions, and,
    where the plane has a `step_num` stat at all, anything that may be a step annotation."""
    if plane.name not in annotated:
        annotated[plane.name] = any(m.name == "step_num" for m in plane.stat_metadata.values())
    return lambda name: (_candidate(name) if annotated[plane.name] else
                         name.startswith("PjitFunction(") or ENGINE_FUNCTIONS.search(name) is not None)


def _mark(plane, line_name: str, ev, base_ps: float) -> Mark | None:
    smeta = plane.stat_metadata
    name = plane.event_metadata[ev.metadata_id].name
    stats = {smeta[s.metadata_id].name: xspace.stat_value(s, smeta) for s in ev.stats if s.metadata_id in smeta}
    step = stats.get("step_num")
    if step is None and not (name.startswith(("$", "PjitFunction(")) or ENGINE_FUNCTIONS.search(name)):
        return None
    if line_name.startswith(_WORKER_LINES):
        return None
    start = (base_ps + ev.offset_ps) / 1000
    return Mark(name, start, start + ev.duration_ps / 1000, line_name, _int(step),
                tuple((k, str(v)) for k, v in stats.items() if k not in _INTERNAL_STATS))


def _xplane_marks(space, op_names: set[str], picked: list, host_walked: bool) -> list[Mark]:
    """Dispatches, engine functions and step annotations on the host planes' user threads; only
    their events are decoded, and a plane the CPU op reader already walked (`picked`: the
    events it handed back) is not walked again."""
    origin = xspace.origin_ps(space)
    out = [_mark(plane, line, ev, base) for plane, line, ev, base in picked]
    done = {p.name for p in space.planes_named("/host:CPU")} if host_walked else set()
    annotated: dict = {}
    for plane in space.planes_named("/host:"):
        if plane.name in done:
            continue
        pick = _picker(plane, annotated)
        keep = {k for k, m in plane.event_metadata.items() if m.name not in op_names and pick(m.name)}
        if not keep:
            continue
        for line in plane.iter_lines(keep=keep, skip=lambda name: name.startswith(_WORKER_LINES)):
            base = origin + line.timestamp_ns * 1000
            out += [_mark(plane, line.name, ev, base) for ev in line.events]
    return sorted((m for m in out if m is not None), key=lambda m: m.start_ns)


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _cpu_runs(found: list[Op], spans: list[tuple[float, float]]) -> list[Run]:
    """CPU program runs named by the module of the ops they hold."""
    import bisect
    starts = [o.start_ns for o in found]
    out = []
    for a, b in spans:
        inside = found[bisect.bisect_left(starts, a):bisect.bisect_right(starts, b)]
        if inside:
            out.append(Run(ops_mod.module_name(inside[0].module), inside[0].device, a, b))
    return out


GAP_NS = 1e6  # device ops of one program this far apart are two runs of it (GPU: no `XLA Modules` line)


def op_runs(found: list[Op]) -> list[Run]:
    """Program runs from the ops themselves, for device captures without `XLA Modules` lines
    (GPU): a run is a stretch of one program's ops on one device."""
    out: list[Run] = []
    last: dict[str, list] = {}
    for o in found:
        if not o.device.startswith("/device:"):
            continue
        module = ops_mod.module_name(o.module)
        cur = last.get(o.device)
        if cur is None or cur[0] != module or o.start_ns - cur[2] > GAP_NS:
            if cur is not None:
                out.append(Run(cur[0], o.device, cur[1], cur[2]))
            cur = last[o.device] = [module, o.start_ns, o.end_ns]
        cur[2] = max(cur[2], o.end_ns)
    out += [Run(m, d, a, b) for d, (m, a, b) in last.items()]
    return sorted(out, key=lambda r: r.start_ns)


def load_xplane(path: str) -> Capture:
    space = xspace.load(path)
    modules = ops_mod.modules_of(space)
    annotated: dict = {}
    picked: list = []
    found, spans = ops_mod.ops_and_programs(space, modules, lambda plane, name: _picker(plane, annotated)(name),
                                            picked)
    timed = ops_mod.device_runs(space)
    runs = timed or op_runs(found) or _cpu_runs(found, spans)
    names = {n for m in modules.values() for n in m.instructions}
    lines = frozenset(line.name for p in space.planes_named("/device:") for line in p.lines)
    host_walked = not found or found[0].device.startswith("/host:")  # no device ops: host.read ran
    return Capture(path, "xplane", found, spans, runs, _xplane_marks(space, names, picked, host_walked), modules,
                   tuple(p.name for p in space.planes), lines, space, runs_timed=bool(timed))


def load_chrome_json(path: str) -> Capture:
    from . import chrome_json
    found, runs, host, facts = chrome_json.read(path)
    marks = []
    for _, thread, ev in host:
        name, args = str(ev.get("name", "")), ev.get("args") or {}
        step = _int(args.get("step_num"))
        if step is None and not (name.startswith("PjitFunction(") or ENGINE_FUNCTIONS.search(name)):
            continue
        if thread.startswith(_WORKER_LINES):
            continue
        start = float(ev.get("ts", 0)) * 1e3
        marks.append(Mark(name, start, start + float(ev.get("dur", 0)) * 1e3, thread, step,
                          tuple((k, str(v)) for k, v in args.items() if k not in _INTERNAL_STATS)))
    spans = sorted((r.start_ns, r.end_ns) for r in runs)
    devices = tuple(sorted({r.device for r in runs} | {o.device for o in found}))
    return Capture(path, "chrome-json", found, spans, runs, sorted(marks, key=lambda m: m.start_ns), {},
                   devices + ("/host:CPU",) * bool(host), frozenset(o.timeline.split(" ", 1)[-1] for o in found),
                   events=facts["events"], unread_cpu_ops=facts["cpu_ops"])


def is_chrome_json(path: str) -> bool:
    return path.endswith((".trace.json", ".trace.json.gz", ".json.gz", ".json"))


def load(path: str) -> Capture:
    return load_chrome_json(path) if is_chrome_json(path) else load_xplane(path)
