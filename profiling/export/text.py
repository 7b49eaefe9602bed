"""`summarize` and `compare`: terminal tables plus CSV, JSON, Chrome-trace and plot exports."""
from __future__ import annotations

import json
import os
import textwrap

from . import chrome_trace
from ..analysis import compare as compare_mod
from ..analysis.analysis import Analysis
from ..analysis.table import Table
from ..trace.ops import UNSCOPED

TOP_OPS_COLUMNS = ["op", "category", "count", "total_ms", "avg_ms", "max_ms", "pct", "scope"]


def _heading(text: str) -> str:
    return f"\n== {text} " + "=" * max(0, 96 - len(text))


def render(a: Analysis, top: int = 15, detail: bool = False) -> str:
    out = [f"capture: {a.xplane}"]
    ctx = a.run_info
    if ctx.get("engine"):
        e = ctx["engine"]
        out.append(f"model: {e.get('model')}  device: {e.get('platform')} x{e.get('device_count')} "
                   f"({e.get('device_kind')})  dtype: {e.get('dtype')}  eager: {e.get('enforce_eager')}")
    out.append(_heading("phases"))
    phases = a.phase_summary()
    out.append(phases.render())
    for r in phases.rows:
        if r["busy_ms"] and r["ops_ms"] < 0.8 * r["busy_ms"]:
            out.append(textwrap.fill(
                f"note: {r['phase']} op events cover {100 * r['ops_ms'] / r['busy_ms']:.0f}% of the time XLA "
                f"programs ran; on CPU, ops that XLA splits over its thread pool are timed only on the "
                f"thread that started them.", 100, break_on_hyphens=False))
    lat = a.request_latency()
    if lat:
        out.append("  ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    for phase in a.phases:
        out.append(_heading(phase))
        model = a.model_table(phase)
        if not detail:
            model = Table(model.title, model.columns, [r for r in model.rows if r["depth"] == 0])
        out.append(model.render())
        if all(r["name"] == UNSCOPED for r in model.rows if r["depth"] == 0):
            out.append(textwrap.fill(
                "note: no module names in this capture's HLO metadata; capture with XLA_HLO_DEBUG=1 "
                "and --enforce-eager for a per-layer table.", 100, break_on_hyphens=False))
        out.append("")
        out.append(a.summary_table(phase).render())
        out.append("")
        out.append(a.top_ops(phase, top).render(columns=TOP_OPS_COLUMNS))
    out.append(_heading("compilations"))
    out.append(_compile_text(a.compile_report()))
    roof = a.roofline()
    if roof:
        out.append(_heading("roofline"))
        out.append(_roofline_text(roof))
    if a.outside:
        out.append(f"\n{len(a.outside)} op executions fell outside every engine step (not in the tables).")
    return "\n".join(out)


def _compile_text(rep: dict) -> str:
    lines = []
    for label, key in (("warm-up", "warmup"), ("profiled passes", "profiled_passes")):
        st = rep.get(key)
        if st:
            lines.append(f"{label}: {st['compiles']} compilation(s), {st['compile_time_s']:.2f}s; "
                         f"persistent cache hits {st['cache_hits']}, misses {st['cache_misses']}")
    if rep.get("steps_that_compiled"):
        for s in rep["steps_that_compiled"]:
            lines.append(f"  step {s['step']} ({s['phase']}, bucket {s['bucket']}, kv {s['kv_bucket']}) "
                         f"compiled {s['compiles']} graph(s) in {s['compile_time_s']:.2f}s")
    elif rep.get("warmup") is not None:
        lines.append("no captured step compiled.")
    return "\n".join(lines) or "no compile record (capture made without profiling.py)."


def _roofline_text(roof: dict) -> str:
    peaks = roof.get("peaks") or {}
    lines = [f"peaks: {(peaks.get('flops_per_s') or 0) / 1e9:.1f} GFLOP/s, "
             f"{(peaks.get('bytes_per_s') or 0) / 1e9:.1f} GB/s ({peaks.get('source', 'unknown')})"]
    if "prefill" in roof:
        p = roof["prefill"]
        pct = f", {p['pct_of_peak']:.0f}% of peak" if p.get("pct_of_peak") is not None else ""
        lines.append(f"prefill: {p['flops'] / 1e9:.2f} GFLOP in {p['seconds'] * 1e3:.1f} ms = "
                     f"{p['flops_per_s'] / 1e9:.1f} GFLOP/s{pct}")
    if "decode" in roof:
        d = roof["decode"]
        pct = f", {d['pct_of_peak']:.0f}% of peak" if d.get("pct_of_peak") is not None else ""
        lines.append(f"decode: {d['bytes'] / 1e6:.0f} MB read in {d['seconds'] * 1e3:.1f} ms = "
                     f"{d['bytes_per_s'] / 1e9:.2f} GB/s{pct}")
    return "\n".join(lines)


def write_csv(a: Analysis, base: str) -> list[str]:
    """The seed's file names: <base>_<phase>_model_table.csv and _summary_table.csv, plus top ops."""
    written = []
    for phase in a.phases:
        for name, table in (("model_table", a.model_table(phase)), ("summary_table", a.summary_table(phase)),
                            ("top_ops", a.top_ops(phase))):
            path = f"{base}_{phase}_{name}.csv"
            table.write_csv(path)
            written.append(path)
    path = f"{base}_phase_summary.csv"
    a.phase_summary().write_csv(path)
    return written + [path]


def write_json(a: Analysis, path: str) -> str:
    with open(path, "w") as f:
        json.dump(a.to_dict(), f, indent=1, default=str)
    return path


def summarize(path: str, csv: str | None = None, json_path: str | None = None, chrome: str | None = None,
              plots: str | None = None, top: int = 15, detail: bool = False) -> None:
    for out in (csv, json_path, chrome, plots):
        if out:
            parent = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                raise ValueError(f"cannot write {out}: {parent} is not a writable directory.")
    a = Analysis(path)
    print(render(a, top, detail))
    written = []
    if csv:
        written += write_csv(a, csv)
    if json_path:
        written.append(write_json(a, json_path))
    if chrome:
        chrome_trace.write(a, chrome)
        written.append(chrome)
    if plots:
        from .plots import write_plots
        written += write_plots(a, plots)
    if written:
        print("\nwrote:")
        for path in written:
            print(f"  {path}")


def compare(path_a: str, path_b: str, top: int = 15) -> None:
    a, b = Analysis(path_a), Analysis(path_b)
    print(f"A: {a.xplane}\nB: {b.xplane}")
    for t in compare_mod.compare(a, b):
        print()
        print(t.render(limit=top))
