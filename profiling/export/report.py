"""`summarize`'s requests section (each request's device time, TTFT and TPOT taken apart, the
join's coverage) and its closing findings (what to fix first), in the terminal."""
from __future__ import annotations

import textwrap

from ..analysis import requests as requests_mod
from ..analysis.analysis import Analysis
from ..analysis.findings import Finding
from ..analysis.recompiles import compile_rows
from ..table import Table

WIDTH = 100
REQUEST_COLUMNS = ["request_id", "steps", "queue_ms", "ttft_ms", "prefill_ms", "decode_ms", "host_ms", "padding_ms",
                   "tpot_ms"]
SHOWN = 12  # requests listed: the slowest to their first token


def requests_text(a: Analysis, served: requests_mod.Served | None = None, join_note: str = "") -> list[str]:
    table = requests_mod.request_table(a, served)
    if not table.rows:
        return []
    cov = requests_mod.coverage(a, served)
    slow = sorted(table.rows, key=lambda r: -(r.ttft_ms if r.ttft_ms is not None else -1))
    out = [table.with_rows(slow).render(WIDTH, limit=SHOWN, columns=REQUEST_COLUMNS)]
    for which in ("ttft", "tpot"):
        p = requests_mod.percentiles(table, which)
        if p.rows[0].count:
            out += ["", p.render(WIDTH, columns=[c for c in p.columns if not (which == "tpot" and c == "queue_ms")])]
    queued = [r for r in slow if r.waited_behind][:3]
    notes = [join_note] if join_note else []
    notes.append(f"{cov.requests} requests account for {cov.pct:.1f}% of the capture's {cov.device_ms:,.1f} ms of "
                 f"device time (steps that name their requests)." if cov.pct is not None else
                 "no device time to share out (no XLA program run in the capture).")
    notes += [f"request {r.request_id} queued {r.queue_ms:.1f} ms behind {r.waited_behind}." for r in queued]
    return out + [textwrap.fill(f"note: {n}", WIDTH, break_on_hyphens=False) for n in notes]


def compiles_text(a: Analysis) -> list[str]:
    rows = compile_rows([s.record for s in a.steps if s.record]).rows
    return [textwrap.fill(f"  step {r.step} ({r.phase}): {r.tokens_bucket} tokens x {r.sequences} sequences, KV span "
                          f"{r.kv_span}, sampler `{r.sampling or '?'}`; brought by request {r.request}; {r.avoid}.",
                          WIDTH, subsequent_indent="    ") for r in rows]


def findings_text(table: Table[Finding]) -> list[str]:
    if not table.rows:
        return ["no rule fired: nothing costs more than its threshold in this capture."]
    out = []
    for f in table.rows:
        cost = [f"{f.per_step_ms:.2f} ms per step" if f.per_step_ms is not None else "",
                f"{f.per_request_ms:.2f} ms per request" if f.per_request_ms is not None else ""]
        head = (f"{f.rank}. {f.rule} ({f.subject}): {f.value:.1f} > {f.threshold:g} ({f.unit}); costs "
                f"{', '.join(c for c in cost if c) or 'time'}, {f.total_ms:.2f} ms in this capture")
        out += [textwrap.fill(head, WIDTH, subsequent_indent="   "),
                textwrap.fill(f"evidence: {f.evidence}", WIDTH, initial_indent="   ", subsequent_indent="     "),
                textwrap.fill(f"fix: {f.advice}", WIDTH, initial_indent="   ", subsequent_indent="     ")]
    return out
