"""The analysis layer (`profiling.analysis` and `python -m profiling summarize/compare`) on real
captures: the session's `all_capture` (a CPU run of the small 2-layer llama, prefill and decode,
XLA_HLO_DEBUG=1) and, when /work/shared/testdata is present, real TPU and GPU captures. The
exports of the same capture: tests/test_exports.py."""
from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil

import pytest

from profiling.analysis import tables
from profiling.analysis.analysis import Analysis
from profiling.analysis.compare import compare
from profiling.analysis.compiles import compile_report
from profiling.analysis.roofline import roofline
from profiling.trace import xspace
from profiling.trace.xprof import xprof_tool
from tests.captures import proc_output, profiling_cli

pytestmark = pytest.mark.slow

TESTDATA = "/work/shared/testdata"
TPU_XPLANE = os.path.join(TESTDATA, "tpu_v6e4_jax_xprof_tpu_inference_2.xplane.pb")


# ---- layer table -----------------------------------------------------------------------------
def test_layer_table_has_one_row_per_decoder_layer(all_capture, all_analysis):
    n = all_capture.run_info()["model_config"]["num_hidden_layers"]
    assert n >= 1
    assert all_analysis.phases == ["prefill", "decode"]
    for phase in all_analysis.phases:
        rows = [r for r in tables.model_table(all_analysis, phase).rows if r.depth == 0]
        names = [r.module for r in rows]
        layers = [r for r in rows if r.module.startswith("model.layers.")]
        assert [r.module for r in layers] == [f"model.layers.{i}" for i in range(n)], (phase, names)
        for r in layers:
            assert r.total_ms > 0, (phase, r)
        assert "lm_head" in names, (phase, names)
        assert "sampler" in names, (phase, names)


# ---- phase times and table totals ----------------------------------------------------------------
def test_phase_times_match_manifest(all_capture, all_analysis):
    manifest = all_capture.manifest()
    summary = {r.phase: r for r in tables.phase_summary(all_analysis).rows}
    assert set(summary) == {m["phase"] for m in manifest} == {"prefill", "decode"}
    for phase, row in summary.items():
        recs = [m for m in manifest if m["phase"] == phase]
        assert row.steps == len(recs), (phase, row, len(recs))
        assert [s.step for s in all_analysis.phase_steps(phase)] == [m["step"] for m in recs]
        wall_ms = 1e3 * sum(m["wall_end"] - m["wall_start"] for m in recs)
        assert row.total_ms == pytest.approx(wall_ms, rel=0.05), (phase, row.total_ms, wall_ms)


def test_model_and_summary_tables_sum_to_same_total(all_analysis):
    for phase in all_analysis.phases:
        layer_rows = [r for r in tables.model_table(all_analysis, phase).rows if r.depth == 0]
        cat_rows = tables.summary_table(all_analysis, phase).rows
        layer_total = sum(r.total_ms for r in layer_rows)
        cat_total = sum(r.total_ms for r in cat_rows)
        assert layer_total > 0
        assert layer_total == pytest.approx(cat_total, rel=1e-6), phase
        assert sum(r.ops for r in layer_rows) == sum(r.ops for r in cat_rows), phase
        assert sum(r.pct for r in layer_rows) == pytest.approx(100, abs=1e-6), phase
        assert sum(r.pct for r in cat_rows) == pytest.approx(100, abs=1e-6), phase


# ---- categories ----------------------------------------------------------------------------------
def test_categories_matmul_and_attention_and_matmuls_are_dots(all_analysis):
    for phase in all_analysis.phases:
        cats = {r.category for r in tables.summary_table(all_analysis, phase).rows}
        assert {"matmul", "attention"} <= cats, (phase, cats)
        opcode = {(o.module, o.name): o.opcode for o in all_analysis.phase_ops(phase)}
        matmuls = [r for r in tables.top_ops(all_analysis, phase).rows if r.category == "matmul"]
        assert matmuls, phase
        for r in matmuls:
            assert opcode[(r.module, r.op)] == "dot", (phase, r)
        assert {o.opcode for o in all_analysis.phase_ops(phase) if o.category == "matmul"} == {"dot"}


# ---- compare -------------------------------------------------------------------------------------
def _parse_tables(text: str) -> list[tuple[list[str], list[dict]]]:
    """The fixed-width tables `compare` prints: header, dashes, rows (first column may hold spaces)."""
    lines = text.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        cols = lines[i].split()
        if "delta_ms" in cols and i + 1 < len(lines) and set(lines[i + 1].replace(" ", "")) == {"-"}:
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].strip() and not lines[j].startswith("... "):
                vals = lines[j].rsplit(None, len(cols) - 1)
                assert len(vals) == len(cols), lines[j]
                rows.append(dict(zip(cols, vals)))
                j += 1
            tables.append((cols, rows))
            i = j
        else:
            i += 1
    return tables


def test_compare_cli_same_run_has_zero_deltas(all_capture):
    proc = profiling_cli("compare", all_capture.run, all_capture.run, "--top", "100000")
    assert proc.returncode == 0, proc_output(proc)
    tables = _parse_tables(proc.stdout)
    assert len(tables) == 1 + 2 * 2, proc.stdout[-3000:]  # phases, then layers and ops per phase
    assert "more rows" not in proc.stdout
    for cols, rows in tables:
        assert {"a_ms", "b_ms", "delta_ms", "ratio"} <= set(cols)
        assert rows
        for r in rows:
            assert r["delta_ms"] == "0", r
            assert r["a_ms"] == r["b_ms"], r
            assert r["ratio"] == ("-" if r["a_ms"] == "0" else "1.00"), r


def test_compare_in_process_same_run_has_zero_deltas(all_capture):
    result = compare(Analysis.load(all_capture.run), Analysis.load(all_capture.run))
    assert len(result) == 5
    for t in result:
        assert t.rows, t.title
        for r in t.rows:
            assert r.delta_ms == 0, (t.title, r)
            assert r.a_ms == r.b_ms, (t.title, r)
            if r.a_ms:
                assert r.ratio == 1, (t.title, r)
            else:
                assert r.ratio is None, (t.title, r)


# ---- bad captures --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "random", "none"])
def test_summarize_bad_capture_is_one_error_line(tmp_path, kind):
    run = tmp_path / f"run_{kind}"
    run.mkdir()
    if kind == "empty":
        (run / "vm.xplane.pb").write_bytes(b"")
    elif kind == "random":
        (run / "vm.xplane.pb").write_bytes(random.Random(0).randbytes(64 * 1024))
    proc = profiling_cli("summarize", str(run))
    assert proc.returncode == 2, proc_output(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, proc_output(proc)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1, proc_output(proc)
    assert errors[0].startswith("error: "), errors[0]
    assert str(run) in errors[0], errors[0]


def test_summarize_export_under_a_file_is_one_error_line_before_any_work(all_capture, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "run.json"
    proc = profiling_cli("summarize", all_capture.run, "--json", str(out))
    assert proc.returncode == 2, proc_output(proc)
    assert proc.stderr.strip() == f"error: cannot write {out}: folder {str(blocker)!r} exists and is not a directory."
    assert proc.stdout == ""  # checked before the capture is read


# ---- real TPU and GPU captures -------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isfile(TPU_XPLANE), reason=f"real TPU capture not available ({TPU_XPLANE})")
def test_tpu_capture_device_ops(tmp_path):
    copy = tmp_path / os.path.basename(TPU_XPLANE)
    shutil.copyfile(TPU_XPLANE, copy)
    a = Analysis.load(str(copy))
    assert a.phases == ["all"]
    assert a.ops
    devices = {o.device for o in a.ops}
    assert all(re.fullmatch(r"/device:TPU:\d+", d) for d in devices), devices
    assert len(devices) == 4, devices
    cats = {r.category: r for r in tables.summary_table(a, "all").rows}
    assert "collective" in cats, cats.keys()
    assert cats["collective"].total_ms > 0
    assert any(o.category == "collective" and o.opcode.startswith("all-reduce") for o in a.ops)
    top = tables.top_ops(a, "all", 10).rows
    assert top
    assert all(r.total_ms > 0 for r in top), top
    start, stop = xspace.session_times_ns(a.space)
    duration = stop - start
    assert duration > 0
    self_per_device = collections.Counter()
    for o in a.ops:
        self_per_device[o.device] += o.self_ns
    for dev, total in self_per_device.items():
        assert 0 < total <= duration, (dev, total, duration)


GPU_XPLANE = os.path.join(TESTDATA, "gpu_mi300x_jax08_attention.xplane.pb")


@pytest.mark.parametrize("capture", [TPU_XPLANE, GPU_XPLANE], ids=["tpu_v6e", "gpu_mi300x"])
def test_device_op_times_agree_with_xprof_hlo_stats(tmp_path, capture):
    """Our device-plane op table against XProf's own hlo_stats converter on the same real
    capture: every execution of every op once, and the same total self time."""
    if not os.path.isfile(capture):
        pytest.skip(f"real device capture not available ({capture})")
    copy = tmp_path / os.path.basename(capture)
    shutil.copyfile(capture, copy)
    table = json.loads(xprof_tool(str(copy), "hlo_stats"))
    cols = [c["id"] for c in table["cols"]]
    xprof_rows = [dict(zip(cols, [cell.get("v") for cell in r["c"]])) for r in table["rows"]]
    xprof_us, xprof_count = collections.Counter(), collections.Counter()
    for r in xprof_rows:
        xprof_us[r["hlo_op_name"]] += r["total_self_time"]
        xprof_count[r["hlo_op_name"]] += r["occurrences"]
    ours_us, ours_count = collections.Counter(), collections.Counter()
    for o in Analysis.load(str(copy)).ops:
        ours_us[o.name] += o.self_ns / 1e3
        ours_count[o.name] += 1
    assert ours_count == xprof_count  # every execution of every op, once
    assert all(o.device.startswith("/device:") for o in Analysis.load(str(copy)).ops)
    assert abs(sum(ours_us.values()) - sum(xprof_us.values())) <= 0.01 * sum(xprof_us.values())


# ---- compiles and roofline ----------------------------------------------------------------------
def test_compile_report(all_analysis):
    rep = compile_report(all_analysis)
    assert rep.warmup.compiles > 0, rep
    assert rep.profiled.compiles == 0, rep
    assert rep.steps_that_compiled == [], rep


def test_roofline(all_analysis):
    roof = roofline(all_analysis)
    assert roof.prefill.per_s > 0, roof
    assert roof.decode.per_s > 0, roof
    assert roof.peaks.flops_per_s > 0, roof
    assert roof.peaks.bytes_per_s > 0, roof
    assert roof.prefill.pct_of_peak is not None and roof.decode.pct_of_peak is not None
