"""The HLO programs a capture embeds: each instruction's opcode and metadata (op_type, and
op_name, which holds the Python scope path such as `model.layers.3.self_attn` when the run
used XLA_HLO_DEBUG=1 with lazy tracing). Built like xspace.py: message classes from a field
table (the few fields of xla's hlo.proto we read), no generated module needed.
"""
from __future__ import annotations

import dataclasses
import re

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from . import sources
from .categories import UNSCOPED, primitive_of, scope_of

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tpu_profiling.hlo"
# message -> [(field, number, type, repeated, message type)]
_FIELDS = {
    "HloProto": [("hlo_module", 1, _F.TYPE_MESSAGE, False, "HloModuleProto")],
    "HloModuleProto": [("name", 1, _F.TYPE_STRING, False, None),
                       ("entry_computation_name", 2, _F.TYPE_STRING, False, None),
                       ("computations", 3, _F.TYPE_MESSAGE, True, "HloComputationProto"),
                       ("entry_computation_id", 6, _F.TYPE_INT64, False, None),
                       ("stack_frame_index", 17, _F.TYPE_MESSAGE, False, "StackFrameIndexProto")],
    # where JAX records each op's Python stack: frames of (file, line) locations, by id
    "StackFrameIndexProto": [("file_names", 1, _F.TYPE_STRING, True, None),
                             ("file_locations", 3, _F.TYPE_MESSAGE, True, "FileLocation"),
                             ("stack_frames", 4, _F.TYPE_MESSAGE, True, "StackFrame")],
    "FileLocation": [("file_name_id", 1, _F.TYPE_INT32, False, None), ("line", 3, _F.TYPE_INT32, False, None)],
    "StackFrame": [("file_location_id", 1, _F.TYPE_INT32, False, None), ("parent_frame_id", 2, _F.TYPE_INT32, False, None)],
    "HloComputationProto": [("name", 1, _F.TYPE_STRING, False, None),
                            ("instructions", 2, _F.TYPE_MESSAGE, True, "HloInstructionProto"),
                            ("id", 5, _F.TYPE_INT64, False, None),
                            ("root_id", 6, _F.TYPE_INT64, False, None)],
    "HloInstructionProto": [("name", 1, _F.TYPE_STRING, False, None), ("opcode", 2, _F.TYPE_STRING, False, None),
                            ("metadata", 7, _F.TYPE_MESSAGE, False, "OpMetadata"),
                            ("fusion_kind", 11, _F.TYPE_STRING, False, None),
                            ("custom_call_target", 28, _F.TYPE_STRING, False, None),
                            ("id", 35, _F.TYPE_INT64, False, None),
                            ("operand_ids", 36, _F.TYPE_INT64, True, None),
                            ("called_computation_ids", 38, _F.TYPE_INT64, True, None),
                            ("dot_dimension_numbers", 30, _F.TYPE_MESSAGE, False, "DotDimensionNumbers"),
                            ("shape", 3, _F.TYPE_MESSAGE, False, "ShapeProto"),
                            ("parameter_number", 9, _F.TYPE_INT64, False, None),
                            ("backend_config", 43, _F.TYPE_BYTES, False, None)],
    "ShapeProto": [("element_type", 2, _F.TYPE_INT32, False, None), ("dimensions", 3, _F.TYPE_INT64, True, None)],
    "DotDimensionNumbers": [("lhs_batch_dimensions", 3, _F.TYPE_INT64, True, None)],
    "OpMetadata": [("op_type", 1, _F.TYPE_STRING, False, None), ("op_name", 2, _F.TYPE_STRING, False, None),
                   ("source_file", 3, _F.TYPE_STRING, False, None), ("source_line", 4, _F.TYPE_INT32, False, None),
                   ("stack_frame_id", 15, _F.TYPE_INT32, False, None)],
}


def _build():
    file = descriptor_pb2.FileDescriptorProto(name="tpu_profiling_hlo.proto", package=_PACKAGE, syntax="proto3")
    for name, fields in _FIELDS.items():
        msg = file.message_type.add(name=name)
        for fname, number, ftype, repeated, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.HloProto"))


HloProto = _build()


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    op_type: str        # framework op (e.g. aten__mm) when recorded
    op_name: str        # scope path when recorded (or inherited: see inherited_from)
    fusion_kind: str
    fused_opcodes: tuple[str, ...]   # for fusions: opcodes inside the fused computation
    custom_call_target: str
    inherited_from: str = ""  # the instruction whose metadata this one took (it had none)
    batched_dot: bool = False  # a dot with batch dimensions (attention's QK^T and PV), or a fusion of one
    loops: tuple[str, ...] = ()  # the `while` instructions whose body runs it, outermost first
    source: str = ""    # file:line of the Python code that made it (JAX records it)
    trip_count: int = 0  # a `while` whose iterations XLA knows in advance (known_trip_count)


# Instructions whose metadata says nothing about the work around them.
_PLUMBING = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
_MAX_HOPS = 6


def _scoped(op_name: str) -> bool:
    return scope_of(op_name) != UNSCOPED


def _body_metadata(ins, by_comp) -> tuple[str, str]:
    """A fusion's or call's (op_type, op_name): its own, else its body's last instruction with a
    scope. An op_name without a module scope (`aten__add.3/aten__add`: engine code outside
    every module) counts as none, so that such ops inherit one too."""
    md = ins.metadata
    if _scoped(md.op_name) or ins.opcode not in ("fusion", "call"):
        return md.op_type, md.op_name if _scoped(md.op_name) else ""
    inner = [i for cid in ins.called_computation_ids if cid in by_comp for i in by_comp[cid].instructions]
    named = [i for i in reversed(inner) if _scoped(i.metadata.op_name)]
    return (named[0].metadata.op_type, named[0].metadata.op_name) if named else (md.op_type, "")


def _common_scope(op_names: list[str]) -> str:
    """The longest dotted prefix the scopes share (`model.layers` for ops of several layers)."""
    parts = [scope_of(n).split(".") for n in op_names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _inherit(start, named, users, by_id) -> tuple[str, str] | None:
    """(source, op_name) from the nearest instructions with a scope in the graph from `start`:
    breadth first over the instructions it feeds (whose work asked for it), then over those it
    reads; plumbing and constants (shared by every layer after CSE) are walked through, never
    taken. Found at one distance in several modules (an input every layer reads), it takes the
    scope they share, e.g. `model.layers`."""
    for edges in (lambda i: users.get(i.id, ()), lambda i: [by_id[o] for o in i.operand_ids if o in by_id]):
        seen, frontier = {start.id}, [start]
        for _ in range(_MAX_HOPS):
            nxt, hits = [], []
            for ins in frontier:
                for n in edges(ins):
                    if n.id in seen:
                        continue
                    seen.add(n.id)
                    (hits if named.get(n.id) and n.opcode not in _PLUMBING else nxt).append(n)
            if hits:
                names = [named[h.id] for h in hits]
                if len({scope_of(n) for n in names}) == 1:
                    return hits[0].name, names[0]
                common = _common_scope(names)
                if common:
                    return ",".join(h.name for h in hits[:3]), f"{common}/shared"
                break  # modules with nothing in common: try the other direction
            frontier = nxt
    return None


@dataclasses.dataclass(frozen=True)
class Module:
    """One embedded HLO program: its instructions by name, and the shapes of its entry
    parameters ((element type, dimensions), in parameter order: what a step's inputs look like)."""
    name: str
    instructions: dict[str, Instruction]
    parameters: tuple[tuple[int, tuple[int, ...]], ...] = ()


S32, S64 = 4, 5  # xla PrimitiveType numbers of the integer types token ids and positions use


def _loops(comp_id: int, comp_caller: dict, by_comp: dict) -> tuple[str, ...]:
    """The `while` instructions whose body runs `comp_id` (a while's first called computation
    is its body, the second its condition, which is not counted), outermost first, through any
    calls, fusions and conditionals in between."""
    out, seen = [], set()
    while comp_id in comp_caller and comp_id not in seen:
        seen.add(comp_id)
        ins, parent = comp_caller[comp_id]
        if ins.opcode == "while" and ins.called_computation_ids[0] == comp_id:
            out.append(ins.name)
        comp_id = parent
    return tuple(reversed(out))


def _trip_count(ins) -> int:
    """XLA's `known_trip_count` of a while loop, from its backend config (JSON), else 0."""
    m = re.search(rb'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', ins.backend_config or b"")
    return int(m.group(1)) if m else 0


def _source(md, frames=None) -> str:
    """`model.py:42`: the op's line of model code, from its stack (JAX's stack frame index),
    else the source file and line its metadata names."""
    if frames is not None and md.stack_frame_id:
        found = sources.model_frame(frames(md.stack_frame_id))
        if found:
            return found
    return sources.label(md.source_file, md.source_line) if md.source_file else ""


def _frames(index):
    """frame id -> [(file, line), ...] innermost first, from a module's stack frame index."""
    files, locs, frames = list(index.file_names), list(index.file_locations), list(index.stack_frames)
    cache: dict[int, list] = {}

    def chain(fid: int) -> list:
        if fid not in cache:
            out, seen = [], set()
            while 0 < fid <= len(frames) and fid not in seen and len(out) < 64:
                seen.add(fid)
                fr = frames[fid - 1]
                if 0 < fr.file_location_id <= len(locs):
                    loc = locs[fr.file_location_id - 1]
                    if 0 < loc.file_name_id <= len(files):
                        out.append((files[loc.file_name_id - 1], loc.line))
                fid = fr.parent_frame_id
            cache[fid] = out
        return cache[fid]
    return chain


def instructions(hlo_proto: bytes) -> tuple[str, dict[str, Instruction]]:
    module = read_module(hlo_proto)
    return module.name, module.instructions


def read_module(hlo_proto: bytes) -> Module:
    """Every instruction of the module, over all its computations, by name.
    A fusion or call without metadata of its own takes its body's; an instruction inside a
    called computation takes its caller's; one still without a scope (made by an XLA pass
    that dropped the metadata, e.g. the reduce-window a large reduction is rewritten into)
    inherits it from its neighbours in the graph (`_inherit`), marked by `inherited_from`."""
    proto = HloProto()
    proto.ParseFromString(hlo_proto)
    module = proto.hlo_module
    by_comp = {c.id: c for c in module.computations}
    by_id, caller, users, comp_of, comp_caller = {}, {}, {}, {}, {}
    for comp in module.computations:
        for ins in comp.instructions:
            by_id[ins.id], comp_of[ins.id] = ins, comp.id
    for comp in module.computations:
        for ins in comp.instructions:
            for cid in ins.called_computation_ids:
                comp_caller.setdefault(cid, (ins, comp.id))
                for inner in by_comp[cid].instructions if cid in by_comp else ():
                    caller.setdefault(inner.id, ins)
            for o in ins.operand_ids:
                users.setdefault(o, []).append(ins)
    meta = {i: _body_metadata(ins, by_comp) for i, ins in by_id.items()}
    named = {i: m[1] for i, m in meta.items() if m[1]}
    frames = _frames(module.stack_frame_index) if module.HasField("stack_frame_index") else None
    loops = {cid: _loops(cid, comp_caller, by_comp) for cid in by_comp}
    out: dict[str, Instruction] = {}
    for ins in by_id.values():
        op_type, op_name = meta[ins.id]
        source, outer = "", ins
        while not op_name and outer.id in caller:   # up through the calls that run it
            outer = caller[outer.id]
            op_type, op_name = op_type or meta[outer.id][0], meta[outer.id][1]
        if not op_name and ins.opcode not in _PLUMBING:
            found = _inherit(outer, named, users, by_id)
            if found is not None:
                source, op_name = found
        op_name = op_name or ins.metadata.op_name  # nothing to inherit: keep what it had
        fused, body = (), [ins]
        if ins.opcode == "fusion":
            body = [i for cid in ins.called_computation_ids if cid in by_comp for i in by_comp[cid].instructions]
            fused = tuple(i.opcode for i in body if i.opcode not in ("parameter", "constant"))
        batched = any(i.opcode == "dot" and i.dot_dimension_numbers.lhs_batch_dimensions for i in body)
        op_type = op_type or primitive_of(op_name)  # JAX records no op_type: its primitive is one
        out[ins.name] = Instruction(ins.name, ins.opcode, op_type, op_name, ins.fusion_kind, fused,
                                    ins.custom_call_target, source, batched, loops.get(comp_of[ins.id], ()),
                                    _source(ins.metadata, frames) or _source(outer.metadata, frames),
                                    _trip_count(ins) if ins.opcode == "while" else 0)
    entry = by_comp.get(module.entry_computation_id) or next(
        (c for c in module.computations if c.name == module.entry_computation_name), None)
    params = sorted((i.parameter_number, (i.shape.element_type, tuple(i.shape.dimensions)))
                    for i in (entry.instructions if entry else ()) if i.opcode == "parameter")
    return Module(module.name, out, tuple(p for _, p in params))
