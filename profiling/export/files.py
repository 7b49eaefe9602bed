"""An analysis as files: CSV tables with the layer-wise example's names
(`<base>_<phase>_model_table.csv`, `_summary_table.csv`, plus `_top_ops.csv` and
`<base>_phase_summary.csv`) and one JSON document with the run's context and every table."""
from __future__ import annotations

import dataclasses
import json

from ..analysis import tables
from ..analysis.analysis import Analysis
from ..analysis.breakdown import breakdown_table
from ..analysis.compiles import compile_report
from ..analysis.notes import notes
from ..analysis.recompiles import compile_rows
from ..analysis.requests import Served, percentiles, request_table
from ..analysis.requests import coverage as request_coverage
from ..analysis.roofline import roofline
from ..runs import files as runfiles
from ..table import Table


def phase_tables(a: Analysis, phase: str) -> dict[str, Table]:
    return {"model_table": tables.model_table(a, phase), "summary_table": tables.summary_table(a, phase),
            "top_ops": tables.top_ops(a, phase), "breakdown": breakdown_table(a, phase)}


def capture_tables(a: Analysis, served: Served | None = None, found: Table | None = None) -> dict[str, Table]:
    """The tables of the whole capture: phases, requests (and their percentiles), compiles,
    findings."""
    reqs = request_table(a, served)
    out = {"phase_summary": tables.phase_summary(a), "requests": reqs, "requests_ttft": percentiles(reqs, "ttft"),
           "requests_tpot": percentiles(reqs, "tpot"), "compiles": compile_rows([s.record for s in a.steps if s.record])}
    return out | ({"findings": found} if found is not None else {})


def write_csv(a: Analysis, base: str, out: runfiles.Outputs | None = None, served: Served | None = None,
              found: Table | None = None) -> list[str]:
    """Every table as `<base>_...csv`; all of them or none (`out` holds the command's files)."""
    out = out or runfiles.Outputs()
    written = []
    for phase in a.phases:
        for name, table in phase_tables(a, phase).items():
            written.append(out.write(f"{base}_{phase}_{name}.csv", table.write_csv))
    return written + [out.write(f"{base}_{name}.csv", t.write_csv) for name, t in capture_tables(a, served, found).items()]


def context(a: Analysis) -> dict:
    """The run dir, the capture file and, from the run record, what it ran and with what."""
    out = dict(run_dir=a.run_dir, xplane=a.xplane.rsplit("/", 1)[-1],
               format=a.capture.format if a.capture else "xplane")
    if a.record:
        record = a.record.to_json()
        out.update({k: record[k] for k in ("command", "args", "env", "versions", "engine", "window",
                                            "workload", "peaks") if record.get(k) is not None})
    return out


def steps_json(a: Analysis) -> list[dict]:
    """Every step: where it came from, its phase and why, its window, and what its step
    annotation carries (request ids, for engines that put them there)."""
    return [dict(step=s.step, phase=s.phase, source=s.source, name=s.name, phase_rule=s.phase_rule,
                 start_ns=s.start_ns, end_ns=s.end_ns, duration_ms=s.duration_s * 1e3, ops=len(s.ops),
                 devices=sorted({o.device for o in s.ops}), args=dict(s.args),
                 record=s.record.to_json() if s.record else None) for s in a.steps]


def to_json(a: Analysis, served: Served | None = None, found: Table | None = None) -> dict:
    roof = roofline(a)
    whole = {k: t.to_dict() for k, t in capture_tables(a, served, found).items()}
    return dict(context=context(a), rules=a.rules.to_json() if a.rules else None, notes=notes(a),
                steps=steps_json(a), **whole, request_coverage=dataclasses.asdict(request_coverage(a, served)),
                request_latency=dataclasses.asdict(tables.request_latency(a)),
                phases={p: {k: t.to_dict() for k, t in phase_tables(a, p).items()} for p in a.phases},
                compile_report=dataclasses.asdict(compile_report(a)),
                roofline=dataclasses.asdict(roof) if roof else None,
                ops_outside_steps=len(a.outside))


def write_json(a: Analysis, path: str, out: runfiles.Outputs | None = None, served: Served | None = None,
               found: Table | None = None) -> str:
    text = json.dumps(to_json(a, served, found), indent=1, default=str)
    return (out or runfiles.Outputs()).write(path, lambda tmp: _write_text(tmp, text))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
