"""The analysis layer (`profiling.analysis` and `python -m profiling summarize/compare`) on real
captures: the session's `all_capture` (a CPU run of the small 2-layer llama, prefill and decode,
XLA_HLO_DEBUG=1) and, when /work/shared/testdata is present, a real TPU capture.

The CLI runs as a user runs it (a subprocess); one `summarize` call writes every export and
several tests read its output (module fixture `summarized`).
"""
from __future__ import annotations

import collections
import csv
import gzip
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

from tests.captures import ROOT, profiling_env

TESTDATA = "/work/shared/testdata"
TPU_XPLANE = os.path.join(TESTDATA, "tpu_v6e4_jax_xprof_tpu_inference_2.xplane.pb")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH = 100
REL = 1e-6


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiling", *args], capture_output=True, text=True,
                          env=profiling_env(), cwd=ROOT, timeout=timeout)


def _out(proc) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def _same(x, y, rel=REL) -> bool:
    """Equal values; floats (and ints against floats) within `rel` relative."""
    if isinstance(x, bool) or isinstance(y, bool) or x is None or y is None or isinstance(x, str):
        return x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return math.isclose(x, y, rel_tol=rel, abs_tol=0.0)
    return x == y


def _assert_rows_equal(got: list[dict], want: list[dict], columns, rel=REL, what=""):
    assert len(got) == len(want), f"{what}: {len(got)} rows, Analysis has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        for c in columns:
            assert _same(g[c], w.get(c), rel), f"{what} row {i} column {c}: {g[c]!r} != {w.get(c)!r}"


@pytest.fixture(scope="module")
def capture(all_capture):
    assert all_capture.proc.returncode == 0, _out(all_capture.proc)
    return all_capture


@pytest.fixture(scope="module")
def analysis(capture):
    from profiling.analysis import Analysis
    return Analysis(capture.run)


@pytest.fixture(scope="module")
def summarized(capture, tmp_path_factory):
    """One `summarize` run with every export."""
    out = tmp_path_factory.mktemp("summarize")
    paths = dict(csv=str(out / "r"), json=str(out / "r.json"), chrome=str(out / "trace.json.gz"),
                 plots=str(out / "p"))
    proc = _cli("summarize", capture.run, "--csv", paths["csv"], "--json", paths["json"],
                "--chrome-trace", paths["chrome"], "--plots", paths["plots"])
    assert proc.returncode == 0, _out(proc)
    return proc, paths


@pytest.fixture(scope="module")
def summarized_detail(capture, tmp_path_factory):
    """A second `summarize` run: --detail output and a plain (not gzipped) Chrome trace."""
    chrome = str(tmp_path_factory.mktemp("summarize_detail") / "trace.json")
    proc = _cli("summarize", capture.run, "--detail", "--chrome-trace", chrome)
    assert proc.returncode == 0, _out(proc)
    return proc, chrome


# ---- 1. layer table -----------------------------------------------------------------------------
def test_layer_table_has_one_row_per_decoder_layer(capture, analysis):
    n = capture.run_info()["model_config"]["num_hidden_layers"]
    assert n >= 1
    assert analysis.phases == ["prefill", "decode"]
    for phase in analysis.phases:
        rows = [r for r in analysis.model_table(phase).rows if r["depth"] == 0]
        names = [r["module"] for r in rows]
        layers = [r for r in rows if r["module"].startswith("model.layers.")]
        assert [r["module"] for r in layers] == [f"model.layers.{i}" for i in range(n)], (phase, names)
        for r in layers:
            assert r["total_ms"] > 0, (phase, r)
        assert "lm_head" in names, (phase, names)
        assert "sampler" in names, (phase, names)


# ---- 2. phase times and table totals ----------------------------------------------------------------
def test_phase_times_match_manifest(capture, analysis):
    manifest = capture.manifest()
    summary = {r["phase"]: r for r in analysis.phase_summary().rows}
    assert set(summary) == {m["phase"] for m in manifest} == {"prefill", "decode"}
    for phase, row in summary.items():
        recs = [m for m in manifest if m["phase"] == phase]
        assert row["steps"] == len(recs), (phase, row, len(recs))
        assert [s.step for s in analysis.phase_steps(phase)] == [m["step"] for m in recs]
        wall_ms = 1e3 * sum(m["wall_end"] - m["wall_start"] for m in recs)
        assert row["total_ms"] == pytest.approx(wall_ms, rel=0.05), (phase, row["total_ms"], wall_ms)


def test_model_and_summary_tables_sum_to_same_total(analysis):
    for phase in analysis.phases:
        layer_rows = [r for r in analysis.model_table(phase).rows if r["depth"] == 0]
        cat_rows = analysis.summary_table(phase).rows
        layer_total = sum(r["total_ms"] for r in layer_rows)
        cat_total = sum(r["total_ms"] for r in cat_rows)
        assert layer_total > 0
        assert layer_total == pytest.approx(cat_total, rel=1e-6), phase
        assert sum(r["ops"] for r in layer_rows) == sum(r["ops"] for r in cat_rows), phase
        assert sum(r["pct"] for r in layer_rows) == pytest.approx(100, abs=1e-6), phase
        assert sum(r["pct"] for r in cat_rows) == pytest.approx(100, abs=1e-6), phase


# ---- 3. categories ----------------------------------------------------------------------------------
def test_categories_matmul_and_attention_and_matmuls_are_dots(analysis):
    for phase in analysis.phases:
        cats = {r["category"] for r in analysis.summary_table(phase).rows}
        assert {"matmul", "attention"} <= cats, (phase, cats)
        opcode = {(o.module, o.name): o.opcode for o in analysis.phase_ops(phase)}
        matmuls = [r for r in analysis.top_ops(phase).rows if r["category"] == "matmul"]
        assert matmuls, phase
        for r in matmuls:
            assert opcode[(r["module"], r["op"])] == "dot", (phase, r)
        assert {o.opcode for o in analysis.phase_ops(phase) if o.category == "matmul"} == {"dot"}


# ---- 4. CSV -----------------------------------------------------------------------------------------
def _read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _cell_value(cell: str, like):
    """A CSV cell parsed as the type of the in-memory value it stands for."""
    if like is None:
        return None if cell == "" else cell
    if isinstance(like, bool):
        return cell == "True"
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    return cell


def test_csv_round_trip(summarized, analysis):
    _, paths = summarized
    base = paths["csv"]
    tables = {"phase_summary": analysis.phase_summary()}
    for phase in ("prefill", "decode"):
        tables[f"{phase}_model_table"] = analysis.model_table(phase)
        tables[f"{phase}_summary_table"] = analysis.summary_table(phase)
        tables[f"{phase}_top_ops"] = analysis.top_ops(phase)
    mismatches = []
    for name, table in tables.items():
        path = f"{base}_{name}.csv"
        assert os.path.isfile(path), path
        header, cells = _read_csv(path)
        assert header == table.columns, (name, header)
        assert len(cells) == len(table.rows), name
        for i, (line, row) in enumerate(zip(cells, table.rows)):
            assert len(line) == len(header), (name, i, line)
            for col, cell in zip(header, line):
                want = row.get(col)
                if not _same(_cell_value(cell, want), want):
                    mismatches.append(f"{name} row {i} {col}: csv {cell!r}, Analysis {want!r}")
    assert not mismatches, f"{len(mismatches)} CSV cells differ from Analysis by more than {REL:g} relative:\n" + \
        "\n".join(mismatches[:12])


# ---- 5. JSON ----------------------------------------------------------------------------------------
def test_json_export_matches_analysis(summarized, analysis):
    _, paths = summarized
    with open(paths["json"]) as f:
        data = json.load(f)
    ctx = data["context"]
    for key in ("versions", "engine", "args"):
        assert ctx.get(key), (key, ctx.keys())
    assert ctx["versions"].get("python")
    assert ctx["engine"].get("model")
    want = analysis.to_dict()
    ps = data["phase_summary"]
    assert ps["columns"] == want["phase_summary"]["columns"]
    _assert_rows_equal(ps["rows"], want["phase_summary"]["rows"], ps["columns"], rel=1e-12, what="phase_summary")
    assert set(data["phases"]) == {"prefill", "decode"}
    for phase in ("prefill", "decode"):
        for table in ("model_table", "summary_table", "top_ops"):
            got, exp = data["phases"][phase][table], want["phases"][phase][table]
            assert got["columns"] == exp["columns"], (phase, table)
            keys = sorted(exp["rows"][0]) if exp["rows"] else []
            for g in got["rows"]:
                assert sorted(g) == keys, (phase, table, g)
            _assert_rows_equal(got["rows"], exp["rows"], keys, rel=1e-12, what=f"{phase} {table}")


# ---- 6. Chrome trace ----------------------------------------------------------------------------------
_PHASES = set("BEXIiCbneSTpFsftPOND(M") | {"R", "c", "(", ")"}
_TOL_US = 1e-3 + 1e-9  # 1 ns, plus float representation


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_trace(data, manifest) -> None:
    """A strict reading of the Trace Event Format for what the exporter writes."""
    assert isinstance(data, dict), type(data)
    assert isinstance(data.get("traceEvents"), list) and data["traceEvents"]
    assert data.get("displayTimeUnit") in ("ms", "ns"), data.get("displayTimeUnit")
    events = data["traceEvents"]
    thread_names: dict[tuple, str] = {}
    slices = collections.defaultdict(list)
    for e in events:
        assert isinstance(e, dict), e
        assert e.get("ph") in _PHASES, e
        ph = e["ph"]
        if ph == "X":
            for k in ("name", "ph", "ts", "dur", "pid", "tid"):
                assert k in e, (k, e)
            assert isinstance(e["name"], str), e
            assert _num(e["ts"]), e
            assert _num(e["dur"]) and e["dur"] >= 0, e
            assert isinstance(e["pid"], (int, str)) and isinstance(e["tid"], (int, str)), e
            slices[(e["pid"], e["tid"])].append(e)
        elif ph == "M":
            assert e.get("name") in ("process_name", "thread_name"), e
            assert "pid" in e, e
            assert isinstance(e.get("args"), dict) and isinstance(e["args"].get("name"), str), e
            if e["name"] == "thread_name":
                assert "tid" in e, e
                key = (e["pid"], e["tid"])
                assert key not in thread_names, f"two thread_name events for {key}"
                thread_names[key] = e["args"]["name"]
        elif ph == "C":
            assert isinstance(e.get("name"), str) and "pid" in e and _num(e.get("ts")), e
            assert isinstance(e.get("args"), dict) and e["args"], e
            assert all(_num(v) for v in e["args"].values()), e
    for key, evs in slices.items():
        assert key in thread_names, f"X events on {key} without a thread_name"
        # Nested or disjoint: sweep in start order (longest first at equal starts) with a stack.
        stack: list[float] = []
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and stack[-1] <= start + _TOL_US:
                stack.pop()
            if stack:
                assert end <= stack[-1] + _TOL_US, (
                    f"{thread_names[key]}: {e['name']} [{start}, {end}] partially overlaps a slice ending {stack[-1]}")
            stack.append(end)
    steps_tid = [k for k, n in thread_names.items() if n == "engine steps"]
    assert len(steps_tid) == 1, thread_names
    names = [e["name"] for e in sorted(slices[steps_tid[0]], key=lambda e: e["ts"])]
    want = [f"{m['phase']} {m['step']}" for m in sorted(manifest, key=lambda m: m["wall_start"])]
    assert names == want
    for n in names:
        assert re.fullmatch(r"(prefill|decode) \d+", n), n


def test_chrome_trace_gz_is_valid(summarized, capture):
    _, paths = summarized
    with open(paths["chrome"], "rb") as f:
        assert f.read(2) == b"\x1f\x8b", "not gzip"
    with gzip.open(paths["chrome"], "rt") as f:
        data = json.load(f)
    _check_trace(data, capture.manifest())


def test_chrome_trace_plain_json_is_valid(summarized_detail, capture):
    _, path = summarized_detail
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:2] != b"\x1f\x8b", "a .json trace should not be gzipped"
    _check_trace(json.loads(raw), capture.manifest())


# ---- 7. plots ---------------------------------------------------------------------------------------
def test_plots_are_valid_pngs(summarized):
    from PIL import Image
    _, paths = summarized
    for suffix in ("prefill_layers", "decode_layers", "decode_steps"):
        path = f"{paths['plots']}_{suffix}.png"
        assert os.path.isfile(path), path
        assert os.path.getsize(path) > 0, path
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, path
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size[0] > 0 and im.size[1] > 0, (path, im.size)


# ---- 8. compare -------------------------------------------------------------------------------------
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


def test_compare_cli_same_run_has_zero_deltas(capture):
    proc = _cli("compare", capture.run, capture.run, "--top", "100000")
    assert proc.returncode == 0, _out(proc)
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


def test_compare_in_process_same_run_has_zero_deltas(capture):
    from profiling.analysis import Analysis
    from profiling.compare import compare
    tables = compare(Analysis(capture.run), Analysis(capture.run))
    assert len(tables) == 5
    for t in tables:
        assert t.rows, t.title
        for r in t.rows:
            assert r["delta_ms"] == 0, (t.title, r)
            assert r["a_ms"] == r["b_ms"], (t.title, r)
            if r["a_ms"]:
                assert r["ratio"] == 1, (t.title, r)
            else:
                assert r["ratio"] is None, (t.title, r)


# ---- 9. bad captures --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "random", "none"])
def test_summarize_bad_capture_is_one_error_line(tmp_path, kind):
    run = tmp_path / f"run_{kind}"
    run.mkdir()
    if kind == "empty":
        (run / "vm.xplane.pb").write_bytes(b"")
    elif kind == "random":
        (run / "vm.xplane.pb").write_bytes(random.Random(0).randbytes(64 * 1024))
    proc = _cli("summarize", str(run))
    assert proc.returncode == 2, _out(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, _out(proc)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1, _out(proc)
    assert errors[0].startswith("error: "), errors[0]
    assert str(run) in errors[0], errors[0]


# ---- 10. terminal width -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["exports", "detail"])
def test_summarize_output_fits_100_columns(summarized, summarized_detail, which):
    proc = (summarized if which == "exports" else summarized_detail)[0]
    assert "== prefill" in proc.stdout and "== decode" in proc.stdout
    wide = [(i, len(line), line) for i, line in enumerate(proc.stdout.splitlines()) if len(line) > WIDTH]
    assert not wide, "\n".join(f"line {i}: {n} columns: {line[:160]}" for i, n, line in wide)


# ---- 11. a real TPU capture -------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isfile(TPU_XPLANE), reason=f"real TPU capture not available ({TPU_XPLANE})")
def test_tpu_capture_device_ops(tmp_path):
    from profiling import xspace
    from profiling.analysis import Analysis
    copy = tmp_path / os.path.basename(TPU_XPLANE)
    shutil.copyfile(TPU_XPLANE, copy)
    a = Analysis(str(copy))
    assert a.phases == ["all"]
    assert a.ops
    devices = {o.device for o in a.ops}
    assert all(re.fullmatch(r"/device:TPU:\d+", d) for d in devices), devices
    assert len(devices) == 4, devices
    cats = {r["category"]: r for r in a.summary_table("all").rows}
    assert "collective" in cats, cats.keys()
    assert cats["collective"]["total_ms"] > 0
    assert any(o.category == "collective" and o.opcode.startswith("all-reduce") for o in a.ops)
    top = a.top_ops("all", 10).rows
    assert top
    assert all(r["total_ms"] > 0 for r in top), top
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
    from profiling.analysis import Analysis
    from profiling.verify import xprof_tool
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
    for o in Analysis(str(copy)).ops:
        ours_us[o.name] += o.self_ns / 1e3
        ours_count[o.name] += 1
    assert ours_count == xprof_count  # every execution of every op, once
    assert all(o.device.startswith("/device:") for o in Analysis(str(copy)).ops)
    assert abs(sum(ours_us.values()) - sum(xprof_us.values())) <= 0.01 * sum(xprof_us.values())


# ---- 12. compiles and roofline ----------------------------------------------------------------------
def test_compile_report(analysis):
    rep = analysis.compile_report()
    assert rep["warmup"]["compiles"] > 0, rep
    assert rep["profiled_passes"]["compiles"] == 0, rep
    assert rep["steps_that_compiled"] == [], rep


def test_roofline(analysis):
    roof = analysis.roofline()
    assert roof["prefill"]["flops_per_s"] > 0, roof
    assert roof["decode"]["bytes_per_s"] > 0, roof
    assert roof["peaks"]["flops_per_s"] > 0, roof
    assert roof["peaks"]["bytes_per_s"] > 0, roof
    assert roof["prefill"]["pct_of_peak"] is not None and roof["decode"]["pct_of_peak"] is not None
