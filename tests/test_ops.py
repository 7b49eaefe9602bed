"""Op scopes, categories and self times on small synthetic inputs, where the answer is known."""
from __future__ import annotations

import pytest

from profiling.trace.categories import UNSCOPED, categorize, scope_of
from profiling.trace.ops import Op, set_self_times


@pytest.mark.parametrize("op_name, scope", [
    ("model.layers.3.mlp.12/aten__mm", "model.layers.3.mlp"),         # torch_xla's counter dropped
    ("model.layers.10.self_attn/aten__bmm.4", "model.layers.10.self_attn"),
    ("lm_head/aten__mm", "lm_head"),
    ("sampler.2/aten__topk", "sampler"),
    ("aten__add.3/aten__add", UNSCOPED),                                # a framework op, not a scope
    ("aten__add", UNSCOPED),
    ("", UNSCOPED),
])
def test_scope_of(op_name, scope):
    assert scope_of(op_name) == scope


@pytest.mark.parametrize("args, category", [
    (("dot", (), "aten__mm", "model.layers.0.mlp"), "matmul"),
    (("fusion", ("dot", "add"), "", "model.layers.0.mlp"), "matmul"),             # a fused dot
    (("custom-call", (), "", "x", "", "__cublas$gemm"), "matmul"),
    (("custom-call", (), "", "x", "", "__cudnn$fmhaSoftmax"), "attention"),
    (("fusion", ("exponential", "divide"), "aten__softmax", "model.layers.1.self_attn"), "attention"),
    (("dot", (), "aten__bmm", "model.layers.1.self_attn"), "attention"),          # QK^T inside attention
    (("all-reduce", (), "", "model.layers.0.mlp"), "collective"),
    (("all-reduce-start", (), "", ""), "collective"),
    (("fusion", (), "", "", "collective"), "collective"),                          # a device's own label
    (("sort", (), "aten__topk", "sampler"), "sampling"),
    (("argmax", (), "", UNSCOPED), "other"),                                       # no framework op: unknown
    (("multiply", (), "aten__cos", "model.rotary_emb"), "rope"),
    (("multiply", (), "aten__rsqrt", "model.layers.0.input_layernorm"), "norm"),
    (("reduce", (), "", "model.norm"), "norm"),
    (("transpose", (), "", "model.layers.0.self_attn"), "copy/transpose"),
    (("fusion", ("broadcast", "reshape"), "", ""), "copy/transpose"),              # only data movement
    (("copy-done", (), "", ""), "copy/transpose"),
    (("fusion", ("add", "multiply"), "", ""), "elementwise"),
    (("reduce-window", (), "", UNSCOPED), "elementwise"),
    (("rng-bit-generator", (), "", ""), "other"),
])
def test_categorize(args, category):
    assert categorize(*args) == category


def _op(name, start, duration, timeline="t0") -> Op:
    return Op("m", name, float(start), float(duration), UNSCOPED, "other", "x", "", "/host:CPU", timeline=timeline)


def test_self_times_count_every_nanosecond_once():
    # a call [0, 100) around two ops, the second holding a third; then a sibling after the call
    outer, a, b, inner, after = _op("call", 0, 100), _op("a", 10, 20), _op("b", 40, 50), _op("inner", 45, 10), \
        _op("after", 100, 5)
    ops = [after, inner, b, a, outer]            # any order in
    set_self_times(ops)
    assert {o.name: o.self_ns for o in ops} == {"call": 30, "a": 20, "b": 40, "inner": 10, "after": 5}
    assert sum(o.self_ns for o in ops) == 105    # the union of the intervals


def test_self_times_do_not_go_negative_on_overlap_without_nesting():
    # clocks can make neighbours overlap by a few ns: not nesting, so nothing is subtracted
    first, second = _op("first", 0, 10), _op("second", 8, 10)
    set_self_times([first, second])
    assert (first.self_ns, second.self_ns) == (10, 10)
    # a child ending 1 ns after its parent still counts as nested (tracer rounding)
    parent, child = _op("parent", 0, 10), _op("child", 5, 6)
    set_self_times([parent, child])
    assert (parent.self_ns, child.self_ns) == (4, 6)
