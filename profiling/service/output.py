"""`python -m profiling service parse <dir>`: every `events.jsonl` below <dir> (one per server
process) -> `chrome_tracing.json`, `profiler.db` (SQLite) and the CSV tables of `tables.py`.
Every output file is written to a temp file first and renamed, so none is ever half written."""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3

from ..runs.files import Outputs
from ..table import Table
from .events import find_event_files
from .summaries import summaries
from .tables import ROW_TYPES, tables_of
from .trace import chrome_trace


def _atomic(outputs: Outputs, out_dir: str, name: str, write) -> str:
    """Through a temp file and a rename (`runfiles`); a failed write (a full disk) removes the
    outputs written before it and is one ValueError naming the file."""
    outputs.write(os.path.join(out_dir, name), write)
    return name


def _write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


def _write_db(path: str, tables: dict[str, Table]) -> None:
    con = sqlite3.connect(path)
    try:
        for name, tab in tables.items():
            con.execute(f"CREATE TABLE {name} ({', '.join(tab.columns)})")
            con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(tab.columns))})",
                            [tab.values(r) for r in tab.rows])
        con.commit()
    finally:
        con.close()


@dataclasses.dataclass
class Parsed:
    files: list[str]             # the events files read
    out: str                     # the output dir
    written: list[str]           # file names written there
    tables: dict[str, Table]
    events: int


def parse(path: str, output_path: str | None = None, capture: str | None = None) -> Parsed:
    """Read every events file under `path`, write the outputs into `output_path` (default
    <path>/output). With `capture` (an XLA capture of the same server), also the `requests`
    table: each request's device time, joined by step number. ValueError (nothing written) for
    unusable input."""
    from ..analysis.recompiles import compile_rows
    from .join import load, step_records
    files = find_event_files(path)
    data = load(path)
    tables = tables_of(data)
    tables["compiles"] = compile_rows(step_records(data))  # over the server's life, while collecting
    db_tables = list(ROW_TYPES)
    if capture is not None:
        from ..analysis.analysis import Analysis
        from ..analysis.requests import request_table
        from .join import served
        a = Analysis.load(capture)
        tables["requests"] = request_table(a, served(data, a))
        db_tables.append("requests")
    tables.update(summaries(data))
    out = output_path or os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "output")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output path {out!r} cannot be created ({e.strerror}).") from None
    trace, outputs = chrome_trace(data), Outputs()
    written = [_atomic(outputs, out, "chrome_tracing.json", lambda p: _write_json(p, trace))]
    written.append(_atomic(outputs, out, "profiler.db", lambda p: _write_db(p, {k: tables[k] for k in db_tables})))
    for name, tab in tables.items():
        written.append(_atomic(outputs, out, f"{name}.csv", tab.write_csv))
    return Parsed(files, out, written, tables, len(data.spans) + len(data.markers))


def run(path: str, output_path: str | None = None, capture: str | None = None) -> int:
    res = parse(path, output_path, capture)
    svc = {r.metric: r.value for r in res.tables["service_summary"].rows}
    batches = res.tables["batch"].rows
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"Service profile: {res.events} events from {len(res.files)} file(s) over "
          f"{svc['duration_s']:.3f} s")
    print(f"  requests: {svc['requests']} complete, {svc['incomplete']} incomplete, {svc['failed']} failed; "
          f"steps: {svc['steps']} ({sum(b.phase == 'prefill' for b in batches)} prefill, "
          f"{sum(b.phase == 'decode' for b in batches)} decode)")
    print(f"  throughput: {fmt(svc['request_throughput'], '.2f')} req/s, "
          f"{fmt(svc['output_token_throughput'], '.1f')} output tok/s; "
          f"engine busy {fmt(svc['engine_busy_fraction'], '.1%')}")
    for c in res.tables["compiles"].rows:
        print(f"  step {c.step} compiled {c.compiles} program(s) in {c.compile_s or 0:.2f} s ({c.phase} "
              f"{c.tokens_bucket} x {c.sequences}, KV span {c.kv_span}, `{c.sampling}`), brought by request "
              f"{c.request}; {c.avoid}")
    if "requests" in res.tables:
        print(f"  requests joined to the capture by step number: {len(res.tables['requests'].rows)}")
    print(f"Wrote {res.out}: {', '.join(res.written)}")
    return 0
