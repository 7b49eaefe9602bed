"""`compare` and the op tables on two different synthetic analyses, where every delta is known:
B's decode steps are slower in layer 1's MLP and faster in lm_head, and B has no prefill. Then
`python -m profiling compare` on two real captures (the session's prefill and decode runs),
named as `summarize` lists them."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from profiling.analysis import tables
from profiling.analysis.analysis import Analysis, Step
from profiling.analysis.compare import compare, op_key
from profiling.export.text import compare_text
from profiling.trace.ops import Op
from tests.captures import proc_output, profiling_env

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
    return {r.name: r for r in table.rows}


def test_ops_land_in_their_steps_and_tables_sum():
    assert [len(s.ops) for s in A.steps] == [2, 3, 3] and A.outside == []
    assert A.phases == ["prefill", "decode"] and B.phases == ["decode"]
    layers = {r.module: r.per_step_ms for r in tables.model_table(B, "decode").rows if r.depth == 0}
    assert layers == {"model.layers.0": 1, "model.layers.1": 4, "lm_head": 1.5}
    assert sum(r.pct for r in tables.summary_table(B, "decode").rows) == pytest.approx(100)


def test_compare_signs_and_sizes_of_deltas():
    phases, layers, ops = compare(A, B)
    p = _rows(phases)
    assert (p["decode"].a_ms, p["decode"].b_ms, p["decode"].delta_ms) == (10, 10, 0)
    # a phase only A has: A's time, no value (not 0) for B, and so no delta or ratio
    assert (p["prefill"].a_ms, p["prefill"].b_ms, p["prefill"].a_steps, p["prefill"].b_steps) == \
        (20, None, 1, 0)
    assert p["prefill"].delta_ms is None and p["prefill"].ratio is None
    assert [r.name for r in phases.rows] == ["prefill", "decode"]  # largest change first
    lay = _rows(layers)
    assert lay["model.layers.1"].delta_ms == pytest.approx(2) and lay["model.layers.1"].ratio == pytest.approx(2)
    assert lay["lm_head"].delta_ms == pytest.approx(-1.5) and lay["lm_head"].ratio == pytest.approx(0.5)
    assert lay["model.layers.0"].delta_ms == 0 and lay["model.layers.0"].ratio == 1
    assert [r.name for r in layers.rows] == ["model.layers.1", "lm_head", "model.layers.0"]
    key = op_key(_op(0, 1, "lm_head"))
    assert key == "lm_head aten__mm [matmul]"
    assert _rows(ops)[key].delta_ms == pytest.approx(-1.5)


def test_compare_only_tables_phases_both_runs_have():
    assert len(compare(A, B)) == 1 + 2  # phases, then layers and ops of decode only
    assert len(compare(A, A)) == 1 + 2 * 2


def _text_rows(text: str) -> dict[str, list[str]]:
    """A rendered table's rows by name (names here hold no spaces)."""
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:]}


def test_a_phase_one_run_lacks_is_absent_in_text_and_empty_in_csv_and_json(tmp_path):
    phases = compare(A, B)[0]
    text = compare_text(phases)
    assert _text_rows(text)["prefill"] == ["20.00", "absent", "absent", "absent", "1", "0"], text
    assert _text_rows(text)["decode"] == ["10.00", "10.00", "0", "1.00", "2", "2"], text
    path = tmp_path / "phases.csv"
    phases.write_csv(str(path))
    with open(path, newline="") as f:
        prefill = next(r for r in csv.DictReader(f) if r["name"] == "prefill")
    assert (prefill["b_ms"], prefill["delta_ms"], prefill["ratio"]) == ("", "", ""), prefill
    row = next(r for r in json.loads(json.dumps(phases.to_dict()))["rows"] if r["name"] == "prefill")
    assert (row["b_ms"], row["delta_ms"], row["ratio"]) == (None, None, None), row


def test_an_op_one_run_lacks_is_absent_and_a_ratio_over_zero_is_not():
    only_b = _analysis([_decode(0, 2, 3)[:3] + ([(0, 1, "model.norm")],)])
    rows = _rows(compare(A, only_b)[2])  # decode ops: A has no model.norm op
    norm = rows["model.norm aten__mm [matmul]"]
    assert (norm.a_ms, norm.b_ms, norm.ratio) == (None, 1, None)
    assert _text_rows(compare_text(compare(A, only_b)[1]))["model.norm"] == ["absent", "1.00", "absent", "absent"]
    zero = _analysis([_decode(0, 0, 3)])  # layer 1's op takes no time in both runs
    layers = compare_text(compare(zero, zero)[1])
    assert _text_rows(layers)["model.layers.1"] == ["0", "0", "0", "-"], layers


# ---- the command on real captures ----------------------------------------------------------------
def _cli(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiling", *args], capture_output=True, text=True,
                          env=profiling_env(), cwd=str(cwd), timeout=300)


def test_compare_takes_the_run_names_summarize_lists(tmp_path, prefill_capture, decode_capture):
    """Both runs in one profile dir (links to the session's captures, which stay untouched):
    `summarize profiles` names them, and `compare` takes those bare names."""
    for cap in (prefill_capture, decode_capture):
        assert cap.proc.returncode == 0, proc_output(cap.proc)
    runs = tmp_path / "profiles" / "plugins" / "profile"
    runs.mkdir(parents=True)
    for cap in (prefill_capture, decode_capture):
        os.symlink(cap.run, runs / os.path.basename(cap.run))
    listed = _cli(tmp_path, "summarize", "profiles")
    assert listed.returncode == 0, proc_output(listed)
    names = re.search(r"holds 2 runs \((\S+), (\S+)\)", listed.stdout)
    assert names, listed.stdout[:2000]
    a, b = names.groups()
    assert {a, b} == {os.path.basename(prefill_capture.run), os.path.basename(decode_capture.run)}
    for ref_a, ref_b in ((a, b), (f"profiles/{a}", f"profiles/{b}")):
        proc = _cli(tmp_path, "compare", ref_a, ref_b)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc_output(proc)
        phases = _text_rows(proc.stdout.split("\n\n")[1])
        first, second = ("prefill", "decode") if a == os.path.basename(prefill_capture.run) else ("decode", "prefill")
        assert phases[first][1:4] == ["absent"] * 3 and phases[second][0] == "absent", proc.stdout[:2000]
    missing = _cli(tmp_path, "compare", a, "no_such_run")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, proc_output(missing)
    assert missing.stderr.strip().splitlines() == [
        "error: no_such_run does not exist (as a path, nor as a run named 'no_such_run' in "
        "profiles/plugins/profile/no_such_run)."], missing.stderr
