"""XLA op executions in a capture, each with its module scope and op category.

Where ops are recorded:
  * CPU captures: on host threads named `tf_XLA…`, one event per executed HLO instruction
    with stats `hlo_module`, `hlo_op`, `program_id`; the instruction's metadata (scope path,
    framework op) comes from the HLO protos the capture embeds.
  * TPU/GPU captures: on `/device:…` planes, line `XLA Ops`, with stats such as `hlo_op`,
    `hlo_category`, `tf_op`, `flops`, `bytes_accessed` (on the event or its metadata).
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import re

from . import hlo, host, threadpool, xspace
from .categories import UNSCOPED, categorize, primitive_of, scope_of

_LAYER = re.compile(r"^(model\.layers\.\d+)(?:\.|$)")


@dataclasses.dataclass(slots=True)
class Op:
    module: str          # HLO module (program) name
    name: str            # HLO instruction name
    start_ns: float
    duration_ns: float
    scope: str           # e.g. model.layers.3.self_attn, or categories.UNSCOPED
    category: str
    opcode: str
    framework_op: str    # e.g. aten__mm; '' when unknown
    device: str          # plane name
    flops: float = 0.0   # from device captures that carry them
    bytes_accessed: float = 0.0
    self_ns: float = -1.0  # the op's time in the tables: duration minus nested op events on the
    #                        same timeline; on CPU, its wall time with its thread-pool work (threadpool.py)
    timeline: str = ""     # the thread (host) or device line the op ran on
    cpu_ns: float = -1.0   # CPU time on every thread (CPU captures); -1: same as self_ns
    pool_ns: float = 0.0   # of which on XLA:CPU's thread pool
    inherited: bool = False  # scope inherited from neighbours in the HLO graph (no metadata of its own)
    pool_spans: list | None = None  # (start, end) of its thread-pool work on other threads (CPU)
    loops: tuple = ()      # the `while` instructions whose body runs it, outermost first (hlo.py)
    source: str = ""       # file:line of the model code that made it, where the capture records it
    layer_key: str = ""    # its layer, as the layer finder decided (analysis/layers.py); '' = none
    layer_part: str = ""   # its sub-module within that layer

    def __post_init__(self):
        if self.self_ns < 0:
            self.self_ns = self.duration_ns

    @property
    def cpu_time_ns(self) -> float:
        return self.self_ns if self.cpu_ns < 0 else self.cpu_ns

    @property
    def end_ns(self) -> float:
        return self.start_ns + self.duration_ns

    @property
    def layer(self) -> str:
        """Its decoder layer (`model.layers.N`, or as the layer finder named it), else its scope."""
        if self.layer_key:
            return self.layer_key
        m = _LAYER.match(self.scope)
        return m.group(1) if m else self.scope


def set_self_times(line_ops: list[Op]) -> None:
    """Ops on one timeline may nest (a `call` around the ops it runs): give each op its self
    time, so that sums over ops count every nanosecond once."""
    stack: list[Op] = []
    for op in sorted(line_ops, key=lambda o: (o.start_ns, -o.duration_ns)):
        while stack and stack[-1].end_ns <= op.start_ns:
            stack.pop()
        if stack and op.end_ns <= stack[-1].end_ns + 1:
            stack[-1].self_ns -= op.duration_ns
        stack.append(op)
    for op in line_ops:
        op.self_ns = max(0.0, op.self_ns)


def _instruction_name(event_name: str) -> str:
    """Device planes may name an op by its HLO text: `%copy-start = f32[...] copy-start(...)`."""
    return event_name.split(" = ")[0].strip().lstrip("%")


def _metadata_stats(plane) -> dict[int, dict]:
    out = {}
    for k, md in plane.event_metadata.items():
        if md.stats:
            out[k] = {plane.stat_metadata[s.metadata_id].name: xspace.stat_value(s, plane.stat_metadata)
                      for s in md.stats if s.metadata_id in plane.stat_metadata}
    return out


def _host_ops(space, programs, pick=None) -> tuple[list[Op], list[tuple[float, float]], list]:
    """CPU: op events on the host's threads, with the thread pool's work attributed to them
    (threadpool.py), the program runs, and the events `pick` chose (host.read)."""
    names = {n for instrs in programs.values() for n in instrs}
    trace = host.read(space, names, pick)
    plane = next((p.name for p in space.planes_named("/host:CPU")), "/host:CPU")
    known: dict[tuple, tuple] = {}  # (module, program, op) -> shared strings and category
    out = []
    for ev in trace.ops:
        desc = known.get((ev.module, ev.program, ev.name))
        if desc is None:
            desc = known[(ev.module, ev.program, ev.name)] = _describe_host_op(programs, ev.module, ev.program,
                                                                               ev.name)
        name, module, scope, category, opcode, fw, inherited, loops, source = desc
        out.append(Op(module, name, ev.start_ns, ev.duration_ns, scope, category, opcode, fw, plane,
                      timeline=ev.timeline, inherited=inherited, loops=loops, source=source))
    threadpool.attribute(out, trace.tasks)
    return out, _until_last_op(trace.programs, out), trace.marked


def _until_last_op(spans, found: list[Op]) -> list[tuple[float, float]]:
    """A CPU program run ends with its last op (or that op's pool work); what follows, until
    the caller's wait returns, is the runtime waking the caller: host time, which on a busy
    machine can last longer than a small program."""
    found = sorted(found, key=lambda o: o.start_ns)
    starts = [o.start_ns for o in found]
    out = []
    for a, b in spans:
        inside = found[bisect.bisect_left(starts, a):bisect.bisect_left(starts, b)]
        last = max((max([o.end_ns] + [e for _, e in o.pool_spans or ()]) for o in inside), default=b)
        out.append((a, min(b, max(a, last))))
    return out


def instruction(programs, mod: str, prog, op: str) -> hlo.Instruction | None:
    """The HLO instruction an op event names: in its program `<module>(<program id>)`, or else
    in a program of the same module name. An executable loaded from JAX's persistent
    compilation cache runs with the program id of the process that compiled it, while the
    capture embeds its HLO under this process's id; programs of one function at other bucket
    shapes name their instructions alike, so the scope most of them give the op is taken."""
    ins = programs.get(f"{mod}({prog})" if prog is not None else mod, {}).get(op)
    if ins is not None:
        return ins
    found = [instrs[op] for key, instrs in programs.items() if module_name(key) == mod and op in instrs]
    if not found:
        return None
    votes = collections.Counter(scope_of(i.op_name) for i in found)
    best = votes.most_common(1)[0][0]
    return next(i for i in found if scope_of(i.op_name) == best)


def _describe_host_op(programs, mod: str, prog, op: str) -> tuple:
    ins = instruction(programs, mod, prog, op)
    if ins is None:
        ins = hlo.Instruction(op, op.split(".")[0], "", "", "", (), "")
    scope = scope_of(ins.op_name)
    return (op, mod, scope, categorize(ins.opcode, ins.fused_opcodes, ins.op_type, scope,
                                       custom_call_target=ins.custom_call_target, batched_dot=ins.batched_dot),
            ins.opcode, ins.op_type, bool(ins.inherited_from) and scope != UNSCOPED, ins.loops, ins.source)


def _framework_op(tf_op: str, ins) -> str:
    """A device op's framework op: its `tf_op` stat, which for JAX is the whole op_name
    (`jit(f)/model.layers.0.mlp/dot_general:`) and so reduced to the primitive; else the HLO's."""
    if tf_op:
        return primitive_of(tf_op.rstrip(":")) or tf_op
    return ins.op_type if ins else ""


def _device_ops(space, programs) -> list[Op]:
    """TPU: the `XLA Ops` line of each device plane; GPU: the kernels on its `Stream #…` lines
    (each kernel names its HLO op in an `hlo_op` stat)."""
    out = []
    origin_ps = xspace.origin_ps(space)
    for plane in space.planes_named("/device:"):
        smeta, emeta = plane.stat_metadata, plane.event_metadata
        md_stats = _metadata_stats(plane)
        for line in plane.lines:
            lname = line.name
            if lname != "XLA Ops" and not lname.startswith("Stream #"):
                continue
            base_ps = origin_ps + line.timestamp_ns * 1000
            line_ops = []
            for ev in line.events:
                stats = dict(md_stats.get(ev.metadata_id, {}))
                for s in ev.stats:
                    if s.metadata_id in smeta:
                        stats[smeta[s.metadata_id].name] = xspace.stat_value(s, smeta)
                if lname != "XLA Ops" and "hlo_op" not in stats:
                    continue  # a stream event that is not an XLA kernel (memcpy, ...)
                name = str(stats.get("hlo_op") or _instruction_name(
                    emeta[ev.metadata_id].name if ev.metadata_id in emeta else str(ev.metadata_id)))
                mod, ins = _device_instruction(programs, stats, name)
                fw = _framework_op(str(stats.get("tf_op", "")), ins)
                opcode = ins.opcode if ins else name.split(".")[0]
                scope = scope_of(ins.op_name) if ins else scope_of(fw)
                line_ops.append(Op(mod, name, (base_ps + ev.offset_ps) / 1000, ev.duration_ps / 1000, scope,
                                   categorize(opcode, ins.fused_opcodes if ins else (), fw, scope,
                                              str(stats.get("hlo_category", "")).lower(),
                                              ins.custom_call_target if ins else "",
                                              bool(ins and ins.batched_dot)),
                                   opcode, fw, plane.name, float(stats.get("flops", 0) or 0),
                                   float(stats.get("bytes_accessed", 0) or 0),
                                   timeline=f"{plane.name} {lname}",
                                   inherited=bool(ins and ins.inherited_from) and scope != UNSCOPED,
                                   loops=ins.loops if ins else (), source=ins.source if ins else ""))
            set_self_times(line_ops)
            out += line_ops
    return out


def _device_instruction(programs, stats: dict, op: str) -> tuple[str, hlo.Instruction | None]:
    """(program key, instruction) of a device op from its `program_id` (and `hlo_module`,
    where the event names it)."""
    prog, named = stats.get("program_id"), str(stats.get("hlo_module", ""))
    if prog is None:
        return named, programs.get(named, {}).get(op)
    key = f"{named}({prog})" if named else next((k for k in programs if k.endswith(f"({prog})")), str(prog))
    ins = programs.get(key, {}).get(op)
    if ins is None and named:
        ins = instruction(programs, named, prog, op)
    return key, ins


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One execution of an XLA program: on a device (its `XLA Modules` line), or on the host
    (XLA:CPU: from its first thunk to its last op's work)."""
    module: str          # the program's name (`jit_step_fun`), without its id
    device: str          # plane (or process) name
    start_ns: float
    end_ns: float


def module_name(key: str) -> str:
    """`jit_f(1219...)` -> `jit_f`: a program key without its id."""
    return key.rsplit("(", 1)[0] if key.endswith(")") else key


def device_runs(space) -> list[Run]:
    """Every program execution on the `XLA Modules` line of each device plane (none on CPU)."""
    origin_ps = xspace.origin_ps(space)
    out = []
    for plane in space.planes_named("/device:"):
        emeta = plane.event_metadata
        for line in plane.lines:
            if line.name == "XLA Modules":
                base_ps = origin_ps + line.timestamp_ns * 1000
                out += [Run(module_name(emeta[e.metadata_id].name if e.metadata_id in emeta else ""), plane.name,
                            (base_ps + e.offset_ps) / 1000, (base_ps + e.offset_ps + e.duration_ps) / 1000)
                        for e in line.events]
    return out


def runs_by_device(runs: list[Run]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        out.setdefault(r.device, []).append((r.start_ns, r.end_ns))
    return out


def device_program_runs(space) -> dict[str, list[tuple[float, float]]]:
    """Device plane -> (start, end) in absolute ns of every program execution on its
    `XLA Modules` line (empty for CPU captures)."""
    return runs_by_device(device_runs(space))


def _device_program_spans(space) -> list[tuple[float, float]]:
    return sorted(s for spans in device_program_runs(space).values() for s in spans)


def modules_of(space) -> dict[str, hlo.Module]:
    """The embedded HLO programs by program key (`<module>(<program id>)`, as the metadata plane
    names them)."""
    out = {}
    for key, proto in xspace.hlo_modules(space):
        try:
            out[key] = hlo.read_module(proto)
        except Exception:  # an HLO we cannot parse only loses its metadata
            continue
    return out


def programs_of(space, modules: dict[str, hlo.Module] | None = None) -> dict[str, dict[str, hlo.Instruction]]:
    """HLO instructions by program key and instruction name."""
    return {k: m.instructions for k, m in (modules if modules is not None else modules_of(space)).items()}


def ops_and_programs(space, modules: dict[str, hlo.Module] | None = None, pick=None, picked: list | None = None
                     ) -> tuple[list[Op], list[tuple[float, float]]]:
    """Every op execution in the capture, sorted by start time, and every XLA program run
    ((start, end) in absolute ns). Device planes win when present (they time the ops on the
    accelerator: the `XLA Modules` lines are the runs); otherwise the host's XLA threads are
    read, and a run is the executor's work from its first thunk to the end of its last op
    (bounded by the caller's `ThunkExecutor::Execute (wait for completion)`). A step's time
    outside the runs is host time (tracing, dispatch, transfers, waking the caller)."""
    programs = programs_of(space, modules)
    found, spans = _device_ops(space, programs), _device_program_spans(space)
    if not found:
        found, spans, marked = _host_ops(space, programs, pick)
        if picked is not None:  # the host planes' events `pick` chose, read in the same pass
            picked += marked
    return sorted(found, key=lambda o: o.start_ns), spans


def ops(space) -> list[Op]:
    return ops_and_programs(space)[0]


def program_spans(space) -> list[tuple[float, float]]:
    return ops_and_programs(space)[1]
