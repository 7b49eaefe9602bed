"""`compare` and the op tables on two different synthetic analyses, where every delta is known:
B's decode steps are slower in layer 1's MLP and faster in lm_head, and B has no prefill."""
from __future__ import annotations

import pytest

from profiling.analysis import tables
from profiling.analysis.analysis import Analysis, Step
from profiling.analysis.compare import compare, op_key
from profiling.trace.ops import Op

MS = 1e6  # ns


def _op(start_ms, ms, scope, fw="aten__mm", category="matmul", name="dot.1") -> Op:
    return Op("m", name, start_ms * MS, ms * MS, scope, category, "dot", fw, "/host:CPU", timeline="t")


def _analysis(steps: list[tuple[str, float, float, list[tuple]]]) -> Analysis:
    """steps: (phase, start ms, end ms, ops as (start ms, ms, scope))."""
    built, ops = [], []
    for i, (phase, lo, hi, step_ops) in enumerate(steps):
        built.append(Step(phase, i, lo * MS, hi * MS, None))
        ops += [_op(*o) for o in step_ops]
    return Analysis.from_parts(built, ops)


def _decode(start, mlp_ms, head_ms):
    return ("decode", start, start + 10, [(start, 1, "model.layers.0.mlp"), (start + 1, mlp_ms, "model.layers.1.mlp"),
                                          (start + 6, head_ms, "lm_head")])


A = _analysis([("prefill", 0, 20, [(0, 8, "model.layers.0.mlp"), (8, 8, "model.layers.1.mlp")]),
               _decode(20, 2, 3), _decode(30, 2, 3)])
B = _analysis([_decode(0, 4, 1), _decode(10, 4, 2)])


def _rows(table) -> dict:
    return {r["name"]: r for r in table.rows}


def test_ops_land_in_their_steps_and_tables_sum():
    assert [len(s.ops) for s in A.steps] == [2, 3, 3] and A.outside == []
    assert A.phases == ["prefill", "decode"] and B.phases == ["decode"]
    layers = {r["module"]: r["per_step_ms"] for r in tables.model_table(B, "decode").rows if r["depth"] == 0}
    assert layers == {"model.layers.0": 1, "model.layers.1": 4, "lm_head": 1.5}
    assert sum(r["pct"] for r in tables.summary_table(B, "decode").rows) == pytest.approx(100)


def test_compare_signs_and_sizes_of_deltas():
    phases, layers, ops = compare(A, B)
    p = _rows(phases)
    assert (p["decode"]["a_ms"], p["decode"]["b_ms"], p["decode"]["delta_ms"]) == (10, 10, 0)
    # a phase only A has: A's time, none for B
    assert (p["prefill"]["a_ms"], p["prefill"]["b_ms"], p["prefill"]["a_steps"], p["prefill"]["b_steps"]) == \
        (20, 0, 1, 0)
    assert [r["name"] for r in phases.rows] == ["prefill", "decode"]  # largest change first
    lay = _rows(layers)
    assert lay["model.layers.1"]["delta_ms"] == pytest.approx(2) and lay["model.layers.1"]["ratio"] == pytest.approx(2)
    assert lay["lm_head"]["delta_ms"] == pytest.approx(-1.5) and lay["lm_head"]["ratio"] == pytest.approx(0.5)
    assert lay["model.layers.0"]["delta_ms"] == 0 and lay["model.layers.0"]["ratio"] == 1
    assert [r["name"] for r in layers.rows] == ["model.layers.1", "lm_head", "model.layers.0"]
    key = op_key(_op(0, 1, "lm_head"))
    assert key == "lm_head aten__mm [matmul]"
    assert _rows(ops)[key]["delta_ms"] == pytest.approx(-1.5)


def test_compare_only_tables_phases_both_runs_have():
    assert len(compare(A, B)) == 1 + 2  # phases, then layers and ops of decode only
    assert len(compare(A, A)) == 1 + 2 * 2
