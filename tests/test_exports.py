"""The exports of one capture, written by one `summarize` run as a user runs it (module fixture
`summarized`): CSV and JSON cell for cell against the analysis, the Chrome trace read strictly,
the plots as PNGs, and terminal output that fits 100 columns."""
from __future__ import annotations

import collections
import csv
import gzip
import json
import math
import os
import re

import pytest

from profiling.analysis import tables
from profiling.export import files
from tests.captures import proc_output, profiling_cli

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH = 100
REL = 1e-6


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
def summarized(all_capture, tmp_path_factory):
    """One `summarize` run with every export."""
    out = tmp_path_factory.mktemp("summarize")
    # CSV and plots go into folders that do not exist yet: summarize makes them
    paths = dict(csv=str(out / "csv" / "r"), json=str(out / "r.json"), chrome=str(out / "trace.json.gz"),
                 plots=str(out / "plots" / "p"))
    proc = profiling_cli("summarize", all_capture.run, "--csv", paths["csv"], "--json", paths["json"],
                         "--chrome-trace", paths["chrome"], "--plots", paths["plots"])
    assert proc.returncode == 0, proc_output(proc)
    return proc, paths


@pytest.fixture(scope="module")
def summarized_detail(all_capture, tmp_path_factory):
    """A second `summarize` run: --detail output and a plain (not gzipped) Chrome trace."""
    chrome = str(tmp_path_factory.mktemp("summarize_detail") / "trace.json")
    proc = profiling_cli("summarize", all_capture.run, "--detail", "--chrome-trace", chrome)
    assert proc.returncode == 0, proc_output(proc)
    return proc, chrome


# ---- CSV -----------------------------------------------------------------------------------------
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


def test_csv_round_trip(summarized, all_analysis):
    _, paths = summarized
    base = paths["csv"]
    expected = {"phase_summary": tables.phase_summary(all_analysis)}
    for phase in ("prefill", "decode"):
        expected[f"{phase}_model_table"] = tables.model_table(all_analysis, phase)
        expected[f"{phase}_summary_table"] = tables.summary_table(all_analysis, phase)
        expected[f"{phase}_top_ops"] = tables.top_ops(all_analysis, phase)
    mismatches = []
    for name, table in expected.items():
        path = f"{base}_{name}.csv"
        assert os.path.isfile(path), path
        header, cells = _read_csv(path)
        assert header == table.columns, (name, header)
        assert len(cells) == len(table.rows), name
        for i, (line, row) in enumerate(zip(cells, table.rows)):
            assert len(line) == len(header), (name, i, line)
            for col, cell in zip(header, line):
                want = getattr(row, col)
                if not _same(_cell_value(cell, want), want):
                    mismatches.append(f"{name} row {i} {col}: csv {cell!r}, Analysis {want!r}")
    assert not mismatches, f"{len(mismatches)} CSV cells differ from Analysis by more than {REL:g} relative:\n" + \
        "\n".join(mismatches[:12])


# ---- JSON ----------------------------------------------------------------------------------------
def test_json_export_matches_analysis(summarized, all_analysis):
    _, paths = summarized
    with open(paths["json"]) as f:
        data = json.load(f)
    ctx = data["context"]
    for key in ("versions", "engine", "args"):
        assert ctx.get(key), (key, ctx.keys())
    assert ctx["versions"].get("python")
    assert ctx["engine"].get("model")
    want = files.to_json(all_analysis)
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


# ---- Chrome trace ----------------------------------------------------------------------------------
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


def test_chrome_trace_gz_is_valid(summarized, all_capture):
    _, paths = summarized
    with open(paths["chrome"], "rb") as f:
        assert f.read(2) == b"\x1f\x8b", "not gzip"
    with gzip.open(paths["chrome"], "rt") as f:
        data = json.load(f)
    _check_trace(data, all_capture.manifest())


def test_chrome_trace_plain_json_is_valid(summarized_detail, all_capture):
    _, path = summarized_detail
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:2] != b"\x1f\x8b", "a .json trace should not be gzipped"
    _check_trace(json.loads(raw), all_capture.manifest())


# ---- plots ---------------------------------------------------------------------------------------
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


# ---- terminal width -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["exports", "detail"])
def test_summarize_output_fits_100_columns(summarized, summarized_detail, which):
    proc = (summarized if which == "exports" else summarized_detail)[0]
    assert "== prefill" in proc.stdout and "== decode" in proc.stdout
    wide = [(i, len(line), line) for i, line in enumerate(proc.stdout.splitlines()) if len(line) > WIDTH]
    assert not wide, "\n".join(f"line {i}: {n} columns: {line[:160]}" for i, n, line in wide)


