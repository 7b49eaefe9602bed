"""`summarize` in the terminal: phases, then per phase the layer table, the category table and
the top ops, then compilations and the roofline; every line fits 100 columns. And `compare`'s
tables, where what one run lacks reads "absent"."""
from __future__ import annotations

import textwrap

from ..analysis import tables
from ..analysis.analysis import Analysis
from ..analysis.breakdown import breakdown_table
from ..analysis.compiles import CompileReport, compile_report
from ..analysis.fidelity import coverage, layer_outliers
from ..analysis.notes import notes
from ..analysis.roofline import Roofline, roofline
from ..table import Table
from . import report

ABSENT = "absent"
TOP_OPS_COLUMNS = ["op", "category", "count", "total_ms", "cpu_ms", "max_ms", "pct", "scope"]  # avg: CSV, JSON
WIDTH = 100


def _heading(text: str) -> str:
    return f"\n== {text} " + "=" * max(0, WIDTH - 4 - len(text))


def _note(text: str) -> str:
    return textwrap.fill(f"note: {text}", WIDTH, break_on_hyphens=False)


def render(a: Analysis, top: int = 15, detail: bool = False, served=None, join_note: str = "",
           found=None) -> str:
    """Every table; `served` joins a service profile's requests, `found` the findings to end with."""
    out = [f"capture: {a.xplane}"]
    engine = a.record.engine if a.record else None
    if engine:
        d = engine.device
        out.append(f"model: {engine.model}")  # a line of its own: a model dir's path can be long
        out.append(f"backend: {a.record.backend}  device: {d.platform} x{d.device_count} ({d.device_kind})  "
                   f"dtype: {d.dtype}  eager: {engine.enforce_eager}")
    out += rules_text(a)
    out.append(_heading("phases"))
    phases = tables.phase_summary(a)
    out.append(phases.render())
    for phase in a.phases:
        out.append(coverage_text(coverage(a, phase)))
    latency = tables.request_latency(a).items()
    if latency:
        out.append("  ".join(f"{k} {v:.2f}" for k, v in latency))
    requests = report.requests_text(a, served, join_note)
    if requests:
        out += [_heading("requests")] + requests
    for phase in a.phases:
        out += _phase_text(a, phase, top, detail)
    out.append(_heading("compilations"))
    out.append(compile_text(compile_report(a)))
    out += report.compiles_text(a)
    roof = roofline(a)
    if roof:
        out.append(_heading("roofline"))
        out.append(roofline_text(roof))
    if a.outside:
        out.append(f"\n{len(a.outside)} op executions fell outside every engine step (not in the tables).")
    if found is not None:
        out += [_heading("findings: what to fix first")] + report.findings_text(found)
    return "\n".join(out)


def _phase_text(a: Analysis, phase: str, top: int, detail: bool) -> list[str]:
    model = tables.model_table(a, phase)
    if not detail:
        model = model.with_rows(r for r in model.rows if r.depth == 0)
    out = [_heading(phase), model.render()]
    out += [_note(f"{o.layer} takes {o.layer_ms:.1f} ms, the layers' median {o.median_ms:.1f} ms: {o.op} "
                  f"{o.op_ms:.1f} ms against {o.sibling_op_ms:.1f} ms in the others; {o.reason}.")
            for o in layer_outliers(a, phase)]
    top_ops = tables.top_ops(a, phase, top)
    marked = lambda r, c, v: v + "*" if c == "scope" and r.inherited else v  # noqa: E731
    out += ["", tables.summary_table(a, phase).render(), "", top_ops.render(columns=TOP_OPS_COLUMNS, cell=marked)]
    if any(r.inherited for r in top_ops.rows):
        out.append("* scope inherited from the HLO graph: the op has no metadata of its own")
    waits = sum(r.pct for r in tables.top_ops(a, phase).rows if r.op.split(".")[0].endswith("-done"))
    if waits >= 50:
        out.append(_note(f"{waits:.0f}% of op time is `-done` ops, the end of an async copy "
                         f"or collective: time the device waited, not work (see the breakdown)."))
    return out + ["", breakdown_table(a, phase).render()]


def rules_text(a: Analysis) -> list[str]:
    """How the steps, phases and layers were found (one line each), then the notes true for
    this capture (analysis/notes.py)."""
    out = []
    if a.rules:
        phases = ", ".join(f"{p} {len(a.phase_steps(p))}" for p in a.phases)
        out += [textwrap.fill(a.rules.steps.text, WIDTH, subsequent_indent="  "),
                textwrap.fill(f"{a.rules.phases.text} ({phases})", WIDTH, subsequent_indent="  "),
                textwrap.fill(a.rules.layers.text, WIDTH, subsequent_indent="  ")]
    return out + [_note(n) for n in notes(a)]


def coverage_text(c) -> str:
    if c.pct is None:
        return f"{c.phase}: no XLA program runs in this capture to measure coverage against."
    pool = f", {c.pool_ms:,.1f} ms of it on XLA:CPU's thread pool" if c.pool_ms else ""
    cpu = f" (ops' CPU time {c.cpu_ms:,.1f} ms{pool})" if abs(c.cpu_ms - c.op_ms) > 1e-6 else ""
    stalls = (f"; {c.stall_ms:,.1f} ms of it are stalls of 1 ms or more with no op running on any thread "
              f"(the OS running other work: a busy machine), and of the rest they cover "
              f"{c.pct_less_stalls:.1f}%") if c.stall_ms else ""
    return _note(f"{c.phase} op tables cover {c.pct:.1f}% of the {c.program_ms:,.1f} ms XLA programs ran{stalls}"
                 f"{cpu}; unscoped {c.unscoped_ms:,.1f} ms, scope inherited from the HLO graph "
                 f"{c.inherited_ms:,.1f} ms.")


def compile_text(rep: CompileReport) -> str:
    lines = []
    for label, st in (("warm-up", rep.warmup), ("profiled passes", rep.profiled)):
        if st:
            lines.append(f"{label}: {st.compiles} compilation(s), {st.compile_time_s:.2f}s; "
                         f"persistent cache hits {st.cache_hits}, misses {st.cache_misses}")
    for s in rep.steps_that_compiled:
        lines.append(f"  step {s.step} ({s.phase}, bucket {s.bucket}, kv {s.kv_bucket}) "
                     f"compiled {s.compiles} graph(s) in {s.compile_time_s:.2f}s")
    if not rep.steps_that_compiled and rep.warmup is not None:
        lines.append("no captured step compiled.")
    return "\n".join(lines) or "no compile record (capture made without profiling.py)."


def _per_s(value: float | None, unit: str, scale: float) -> str:
    return "not measured" if value is None else f"{value / scale:.1f} {unit}"


def roofline_text(roof: Roofline) -> str:
    peaks = roof.peaks
    if peaks is None or (peaks.flops_per_s is None and peaks.bytes_per_s is None):
        lines = [f"peaks: {peaks.source if peaks else 'not recorded'}"]
    else:
        lines = [f"peaks: {_per_s(peaks.flops_per_s, 'GFLOP/s', 1e9)}, {_per_s(peaks.bytes_per_s, 'GB/s', 1e9)} "
                 f"({peaks.source})"]
    if roof.prefill:
        p = roof.prefill
        pct = f", {p.pct_of_peak:.0f}% of peak" if p.pct_of_peak is not None else ""
        lines.append(f"prefill: {p.work / 1e9:.2f} GFLOP in {p.seconds * 1e3:.1f} ms = "
                     f"{p.per_s / 1e9:.1f} GFLOP/s{pct}")
    if roof.decode:
        d = roof.decode
        pct = f", {d.pct_of_peak:.0f}% of peak" if d.pct_of_peak is not None else ""
        lines.append(f"decode: {d.work / 1e6:.0f} MB read in {d.seconds * 1e3:.1f} ms = "
                     f"{d.per_s / 1e9:.2f} GB/s{pct}")
    return "\n".join(lines)


def compare_text(t: Table, limit: int | None = None) -> str:
    """A `compare` table: in a row one run lacks (no a_ms or no b_ms), every empty cell reads
    "absent"; elsewhere an empty cell (a ratio over a time of 0) stays "-". The rows keep None,
    so CSV and JSON say nothing rather than 0."""
    return t.render(limit=limit, cell=lambda r, c, v: ABSENT if v is None and r.absent else v)
