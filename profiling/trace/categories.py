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
_NORM_OPS = ("aten__rsqrt", "aten__pow", "aten__mean", "aten__var", "rsqrt")
# JAX names one primitive (dot_general) for projections and attention alike, and has no softmax op:
# inside self_attn a batched dot is attention (QK^T, PV), and so are softmax's max, exp and mask.
_JAX_ATTENTION_OPS = ("reduce_max", "exp", "select_n")


# JAX's op_name: the transforms (`jit(prefill_forward)`, `jvp(f)`, ...), the named scopes, then the
# primitive: `jit(prefill_forward)/model.layers.3.self_attn/dot_general`. Wrappers inside a scope
# (`jit(silu)`, an einsum's `bthd,bshd->bhts`) end the scope path. Flax names a module's scope
# by its path (`model/layers/3/mlp`): a numeric part is a list index, and part of the scope.
_TRANSFORM = re.compile(r"^[\w.]+\(.*\)$")
_SCOPE_PART = re.compile(r"^(?:[A-Za-z_][\w.]*|\d+)$")
# lax control flow and mapping around the scopes
_CONTROL = ("while", "body", "cond", "scan", "shard_map", "closed_call", "remat", "checkpoint", "pjit",
            "custom_jvp_call", "custom_vjp_call", "xla_pmap", "branch")
_KERNEL = ("shard_map", "pallas_call")  # a chain through these names a kernel (e.g. Pallas attention)


def _leading(parts: list[str]) -> int:
    i = 0
    while i < len(parts) and (_TRANSFORM.match(parts[i]) or parts[i] in _CONTROL):
        i += 1
    return i


def _jax_parts(op_name: str) -> list[str] | None:
    """The components after JAX's leading transforms and control flow; None when `op_name`
    is not JAX's (torch_xla's starts with a module scope or a framework op)."""
    parts = op_name.split("/")
    if not _TRANSFORM.match(parts[0]):
        return None
    return parts[_leading(parts):]


def _kernel_scope(op_name: str) -> str:
    """An op with no named scope inside a mapped or Pallas kernel called from the program
    (`jit(step_fun)/jit(_jax_attn_func)/shard_map/jit(ragged_paged_attention)/...`): the names
    of the functions that lead to it (`_jax_attn_func.ragged_paged_attention`)."""
    parts = op_name.split("/")
    chain = parts[:_leading(parts)]
    if not any(p in _KERNEL for p in chain) and not any("attn" in p or "attention" in p for p in chain[1:]):
        return ""
    names = [p[p.index("(") + 1:-1] for p in chain[1:] if _TRANSFORM.match(p) and p.startswith(("jit(", "pjit("))]
    return ".".join(n for n in names if _SCOPE_PART.match(n))


def primitive_of(op_name: str) -> str:
    """JAX: the primitive an op_name ends with (`dot_general`), its framework op; '' otherwise."""
    parts = _jax_parts(op_name)
    return parts[-1] if parts and not _TRANSFORM.match(parts[-1]) else ""


def _jax_scope(parts: list[str], op_name: str) -> str:
    scope = []
    for part in parts[:-1]:  # the last one is the primitive
        if part in _CONTROL:  # control flow inside a scope (a scan over layers)
            continue
        if not _SCOPE_PART.match(part):
            break
        scope.append(part)
    return ".".join(scope) or _kernel_scope(op_name) or UNSCOPED


def scope_of(op_name: str) -> str:
    """`model.layers.3.mlp.12/aten__mm` -> `model.layers.3.mlp` (torch_xla appends a counter
    to each scope name); JAX's `jit(f)/model.layers.3.mlp/dot_general` -> `model.layers.3.mlp`
    (nested scopes joined with dots); no scope -> UNSCOPED."""
    if ";" in op_name:  # a fusion of ops from several places (torchax): the first with a scope
        scopes = [scope_of(n) for n in op_name.split(";")]
        return next((sc for sc in scopes if sc != UNSCOPED), UNSCOPED)
    jax_parts = _jax_parts(op_name)
    if jax_parts is not None:
        return _jax_scope(jax_parts, op_name)
    head = op_name.split("/")[0] if "/" in op_name else ""
    if not head or "__" in head:  # no scope, or a framework op name (aten__add.3)
        return UNSCOPED
    return _COUNTER.sub("", head)


def _leaf(scope: str) -> str:
    return scope.rsplit(".", 1)[-1].lower()


def _is_norm(scope: str) -> bool:
    """`input_layernorm`, `model.norm`, Flax's `rms_norm`, GPT-2's `ln_f`, `ln_1`."""
    leaf = _leaf(scope)
    return scope != UNSCOPED and (leaf.endswith("norm") or re.fullmatch(r"ln_?(f|\d+)", leaf) is not None)


def _is_attention(scope: str) -> bool:
    """The attention module of a layer, whatever the model calls it (`self_attn`, `attention`,
    `attn`, vLLM's `Attention`)."""
    return "attn" in _leaf(scope) or "attention" in _leaf(scope)


def categorize(opcode: str, fused: tuple[str, ...], framework_op: str, scope: str,
               device_category: str = "", custom_call_target: str = "", batched_dot: bool = False) -> str:
    ops = (opcode,) + fused
    fw = framework_op.lower()
    target = custom_call_target.lower()
    if opcode == "custom-call" and any(k in target for k in ("attention", "fmha", "flash", "attn")):
        return "attention"
    if opcode == "custom-call" and any(k in target for k in ("gemm", "matmul", "blas")):
        return "matmul"
    if any(o in _COLLECTIVE or o.endswith(("-start", "-done")) and o.split("-")[0] in ("all", "reduce", "collective")
           for o in ops) or "collective" in device_category or "all-reduce" in device_category:
        return "collective"
    if scope.startswith("sampler") or any(s in fw for s in _SAMPLING_OPS):
        return "sampling"
    if scope.endswith("rotary_emb") or fw in _ROPE_OPS or fw in ("cos", "sin"):
        return "rope"
    if _is_norm(scope) or fw in _NORM_OPS:
        return "norm"
    is_dot = any(o in ("dot", "convolution") for o in ops) or (opcode == "custom-call" and "matmul" in fw)
    if _is_attention(scope) and (fw in ("aten__matmul", "aten__bmm", "aten__baddbmm") or "softmax" in fw
                                        or fw in ("aten__masked_fill", "aten__where")
                                        or (not fw.startswith("aten") and (batched_dot or fw in _JAX_ATTENTION_OPS))):
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
