"""What an XLA op is for: its module scope (from the HLO metadata's `op_name`) and its category
(matmul, attention, norm, rope, elementwise, copy/transpose, collective, sampling, other),
decided from the opcode, the fused opcodes, the framework op and the scope."""
from __future__ import annotations

import re

UNSCOPED = "(unscoped)"
CATEGORIES = ("matmul", "attention", "norm", "rope", "elementwise", "copy/transpose",
              "collective", "sampling", "other")

_COUNTER = re.compile(r"\.\d+$")
_COLLECTIVE = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "send", "recv")
_COPY = ("copy", "transpose", "reshape", "bitcast", "broadcast", "concatenate", "slice", "pad",
         "dynamic-slice", "dynamic-update-slice", "gather", "scatter", "copy-start", "copy-done",
         "tuple", "get-tuple-element", "parameter", "constant", "iota", "reverse")
_SAMPLING_OPS = ("topk", "sort", "argmax", "multinomial", "log_softmax", "cumsum")
_ROPE_OPS = ("aten__cos", "aten__sin", "aten__neg")
_NORM_OPS = ("aten__rsqrt", "aten__pow", "aten__mean", "aten__var")


def scope_of(op_name: str) -> str:
    """`model.layers.3.mlp.12/aten__mm` -> `model.layers.3.mlp` (torch_xla appends a counter
    to each scope name); no scope -> UNSCOPED."""
    head = op_name.split("/")[0] if "/" in op_name else ""
    if not head or "__" in head:  # no scope, or a framework op name (aten__add.3)
        return UNSCOPED
    return _COUNTER.sub("", head)


def categorize(opcode: str, fused: tuple[str, ...], framework_op: str, scope: str,
               device_category: str = "", custom_call_target: str = "") -> str:
    ops = (opcode,) + fused
    fw = framework_op.lower()
    target = custom_call_target.lower()
    if opcode == "custom-call" and any(k in target for k in ("attention", "fmha", "flash")):
        return "attention"
    if opcode == "custom-call" and any(k in target for k in ("gemm", "matmul", "blas")):
        return "matmul"
    if any(o in _COLLECTIVE or o.endswith(("-start", "-done")) and o.split("-")[0] in ("all", "reduce", "collective")
           for o in ops) or "collective" in device_category or "all-reduce" in device_category:
        return "collective"
    if scope.startswith("sampler") or any(s in fw for s in _SAMPLING_OPS):
        return "sampling"
    if scope.endswith("rotary_emb") or fw in _ROPE_OPS:
        return "rope"
    if scope.endswith("layernorm") or scope == "model.norm" or fw in _NORM_OPS:
        return "norm"
    is_dot = any(o in ("dot", "convolution") for o in ops) or (opcode == "custom-call" and "matmul" in fw)
    if scope.endswith("self_attn") and (fw in ("aten__matmul", "aten__bmm", "aten__baddbmm") or "softmax" in fw
                                        or fw in ("aten__masked_fill", "aten__where")):
        return "attention"
    if is_dot or "convolution" in device_category or device_category == "matmul":
        return "matmul"
    if opcode in _COPY or (fused and all(o in _COPY for o in fused)) or "data formatting" in device_category:
        return "copy/transpose"
    if opcode == "fusion" or opcode in ("add", "multiply", "subtract", "divide", "exponential", "maximum",
                                        "minimum", "select", "compare", "convert", "rsqrt", "tanh",
                                        "logistic", "negate", "log", "and", "or", "xor", "reduce",
                                        "power", "sqrt", "abs", "clamp", "shift-right-logical",
                                        "shift-left", "cosine", "sine", "reduce-window", "map"):
        return "elementwise"
    return "other"
