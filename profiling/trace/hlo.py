"""The HLO programs a capture embeds: each instruction's opcode and metadata (op_type, and
op_name, which holds the Python scope path such as `model.layers.3.self_attn` when the run
used XLA_HLO_DEBUG=1 with lazy tracing). Built like xspace.py: message classes from a field
table (the few fields of xla's hlo.proto we read), no generated module needed.
"""
from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tpu_profiling.hlo"
# message -> [(field, number, type, repeated, message type)]
_FIELDS = {
    "HloProto": [("hlo_module", 1, _F.TYPE_MESSAGE, False, "HloModuleProto")],
    "HloModuleProto": [("name", 1, _F.TYPE_STRING, False, None),
                       ("entry_computation_name", 2, _F.TYPE_STRING, False, None),
                       ("computations", 3, _F.TYPE_MESSAGE, True, "HloComputationProto")],
    "HloComputationProto": [("name", 1, _F.TYPE_STRING, False, None),
                            ("instructions", 2, _F.TYPE_MESSAGE, True, "HloInstructionProto"),
                            ("id", 5, _F.TYPE_INT64, False, None)],
    "HloInstructionProto": [("name", 1, _F.TYPE_STRING, False, None), ("opcode", 2, _F.TYPE_STRING, False, None),
                            ("metadata", 7, _F.TYPE_MESSAGE, False, "OpMetadata"),
                            ("fusion_kind", 11, _F.TYPE_STRING, False, None),
                            ("custom_call_target", 28, _F.TYPE_STRING, False, None),
                            ("id", 35, _F.TYPE_INT64, False, None),
                            ("called_computation_ids", 38, _F.TYPE_INT64, True, None)],
    "OpMetadata": [("op_type", 1, _F.TYPE_STRING, False, None), ("op_name", 2, _F.TYPE_STRING, False, None),
                   ("source_file", 3, _F.TYPE_STRING, False, None), ("source_line", 4, _F.TYPE_INT32, False, None)],
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
    op_name: str        # scope path when recorded
    fusion_kind: str
    fused_opcodes: tuple[str, ...]   # for fusions: opcodes inside the fused computation
    custom_call_target: str


def instructions(hlo_proto: bytes) -> tuple[str, dict[str, Instruction]]:
    """(module name, instruction name -> Instruction) over every computation of the module.
    A fusion inherits the metadata of its fused root when it has none of its own."""
    proto = HloProto()
    proto.ParseFromString(hlo_proto)
    module = proto.hlo_module
    by_id = {c.id: c for c in module.computations}
    out: dict[str, Instruction] = {}
    for comp in module.computations:
        for ins in comp.instructions:
            md = ins.metadata
            op_type, op_name, fused = md.op_type, md.op_name, ()
            if ins.opcode == "fusion":
                inner = [i for cid in ins.called_computation_ids if cid in by_id
                         for i in by_id[cid].instructions]
                fused = tuple(i.opcode for i in inner if i.opcode not in ("parameter", "constant"))
                if not op_name:
                    named = [i for i in reversed(inner) if i.metadata.op_name]
                    if named:
                        op_type, op_name = named[0].metadata.op_type, named[0].metadata.op_name
            out[ins.name] = Instruction(ins.name, ins.opcode, op_type, op_name, ins.fusion_kind,
                                        fused, ins.custom_call_target)
    return module.name, out
