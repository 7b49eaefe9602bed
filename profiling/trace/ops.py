"""XLA op executions in a capture, each with its module scope and op category.

Where ops are recorded:
  * CPU captures: on host threads named `tf_XLA…`, one event per executed HLO instruction
    with stats `hlo_module`, `hlo_op`, `program_id`; the instruction's metadata (scope path,
    framework op) comes from the HLO protos the capture embeds.
  * TPU/GPU captures: on `/device:…` planes, line `XLA Ops`, with stats such as `hlo_op`,
    `hlo_category`, `tf_op`, `flops`, `bytes_accessed` (on the event or its metadata).
"""
from __future__ import annotations

import dataclasses
import re

from . import hlo, xspace
from .categories import categorize, scope_of

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
    self_ns: float = -1.0  # duration minus nested op events on the same timeline
    timeline: str = ""     # the thread (host) or device line the op ran on

    def __post_init__(self):
        if self.self_ns < 0:
            self.self_ns = self.duration_ns

    @property
    def end_ns(self) -> float:
        return self.start_ns + self.duration_ns

    @property
    def layer(self) -> str:
        """model.layers.N for ops inside a decoder layer, else the scope itself."""
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


def _host_ops(space, programs) -> list[Op]:
    """CPU: op events on the host's `tf_XLA…` threads."""
    out = []
    origin_ps = xspace.origin_ps(space)
    for plane in space.planes_named("/host:CPU"):
        smeta, emeta = plane.stat_metadata, plane.event_metadata
        ids = {m.name: k for k, m in smeta.items()}
        k_op, k_mod, k_prog = ids.get("hlo_op"), ids.get("hlo_module"), ids.get("program_id")
        if k_op is None or k_mod is None:
            continue
        # Op events are named after their HLO instruction: read only those.
        names = {n for instrs in programs.values() for n in instrs}
        keep = ({k for k, m in emeta.items() if m.name in names} if names  # no HLO: all but noise
                else {k for k, m in emeta.items() if not m.name.startswith("ThreadpoolListener::")})
        known: dict[tuple, tuple] = {}  # (module, program, op) -> shared strings and category
        plane_name, by_line = plane.name, {}
        for index, line in plane.iter_line_chunks(keep=keep, chunk=20000):
            lname = line.name
            if not lname.startswith("tf_XLA"):
                continue
            base_ps = origin_ps + line.timestamp_ns * 1000
            line_ops = by_line.setdefault(index, [])
            for ev in line.events:
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
                desc = known.get((mod, prog, op))
                if desc is None:
                    desc = known[(mod, prog, op)] = _describe_host_op(programs, str(mod), prog, str(op))
                name, module, scope, category, opcode, fw = desc
                line_ops.append(Op(module, name, (base_ps + ev.offset_ps) / 1000, ev.duration_ps / 1000,
                                   scope, category, opcode, fw, plane_name, timeline=lname))
        for line_ops in by_line.values():
            set_self_times(line_ops)
            out += line_ops
    return out


def _describe_host_op(programs, mod: str, prog, op: str) -> tuple:
    key = f"{mod}({prog})" if prog is not None else mod
    ins = programs.get(key, {}).get(op) or programs.get(mod, {}).get(op)
    if ins is None:
        ins = hlo.Instruction(op, op.split(".")[0], "", "", "", (), "")
    scope = scope_of(ins.op_name)
    return (op, mod, scope, categorize(ins.opcode, ins.fused_opcodes, ins.op_type, scope,
                                       custom_call_target=ins.custom_call_target),
            ins.opcode, ins.op_type)


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
                prog = stats.get("program_id")
                mod = next((k for k in programs if k.endswith(f"({prog})")), str(prog)) if prog is not None \
                    else str(stats.get("hlo_module", ""))
                ins = programs.get(mod, {}).get(name)
                fw = str(stats.get("tf_op", "") or (ins.op_type if ins else ""))
                opcode = ins.opcode if ins else name.split(".")[0]
                scope = scope_of(ins.op_name) if ins else scope_of(fw)
                line_ops.append(Op(mod, name, (base_ps + ev.offset_ps) / 1000, ev.duration_ps / 1000, scope,
                                   categorize(opcode, ins.fused_opcodes if ins else (), fw, scope,
                                              str(stats.get("hlo_category", "")).lower(),
                                              ins.custom_call_target if ins else ""),
                                   opcode, fw, plane.name, float(stats.get("flops", 0) or 0),
                                   float(stats.get("bytes_accessed", 0) or 0),
                                   timeline=f"{plane.name} {lname}"))
            set_self_times(line_ops)
            out += line_ops
    return out


# Events that span one whole execution of an XLA program.
_HOST_PROGRAM_EVENTS = ("ThunkExecutor::Execute (wait for completion)",)


def program_spans(space) -> list[tuple[float, float]]:
    """(start, end) in absolute ns of every XLA program execution: the `XLA Modules` lines of
    device planes, else the CPU runtime's whole-program execute events on host threads. The
    time a step spends outside these is host time (tracing, dispatch, transfers)."""
    origin_ps = xspace.origin_ps(space)
    spans = []
    for device in (True, False):
        for plane in space.planes:
            if plane.name.startswith("/device:") != device:
                continue
            if device:
                keep = None
            else:
                keep = {k for k, m in plane.event_metadata.items() if m.name in _HOST_PROGRAM_EVENTS}
                if not keep:
                    continue
            for line in plane.iter_lines(keep=keep):
                if device and line.name != "XLA Modules":
                    continue
                base_ps = origin_ps + line.timestamp_ns * 1000
                spans += [((base_ps + e.offset_ps) / 1000, (base_ps + e.offset_ps + e.duration_ps) / 1000)
                          for e in line.events]
        if spans:
            break
    return sorted(spans)


def programs_of(space) -> dict[str, dict[str, hlo.Instruction]]:
    """HLO instructions by program key (`<module>(<program id>)`, as the metadata plane names
    them) and instruction name."""
    out = {}
    for key, proto in xspace.hlo_modules(space):
        try:
            out[key] = hlo.instructions(proto)[1]
        except Exception:  # an HLO we cannot parse only loses its metadata
            continue
    return out


def ops(space) -> list[Op]:
    """Every op execution in the capture, sorted by start time. Device planes win when present
    (they time the ops on the accelerator); otherwise the host's XLA threads are read."""
    programs = programs_of(space)
    found = _device_ops(space, programs)
    if not found:
        found = _host_ops(space, programs)
    return sorted(found, key=lambda o: o.start_ns)
