"""`python -m profiling service parse <dir>`: the service profiler's events files (every
`events.jsonl` below <dir>, one per server process) -> a Chrome trace, SQLite and CSV tables.

Tables (times in wall-clock seconds, durations in ms): request (one row per engine request id),
batch (Schedule/batch spans), forward (ModelExecute spans), kvcache (KVCache allocate/free),
and the request, batch and service summaries. They rely on the domain/name pairs of
default_symbols.yaml; spans of any other domain/name appear in the trace only.
Every output file is written to a temp file first and renamed, so none is ever half written.
"""
from __future__ import annotations

import bisect
import collections
import json
import os
import sqlite3
import sys

from ..analysis.table import Table, percentile
from .collector import EVENTS_FILE
from .trace import chrome_trace

COLUMNS = {
    "request": ["request_id", "http_id", "arrival_time", "scheduled_time", "first_token_time", "finish_time",
                "prompt_tokens", "output_tokens", "max_tokens", "finish_reason", "queue_ms", "ttft_ms",
                "tpot_ms", "e2e_ms", "complete"],
    "batch": ["step", "phase", "start_time", "end_time", "duration_ms", "batch_size", "num_tokens",
              "padded_tokens", "kv_len_max", "request_ids"],
    "forward": ["phase", "start_time", "end_time", "duration_ms", "batch_size", "num_tokens", "step"],
    "kvcache": ["time", "action", "request_id", "slot", "tokens", "slots_used", "tokens_held"],
}
KNOWN = {("Request", "arrive"), ("Request", "http"), ("Schedule", "step"), ("Schedule", "batch"),
         ("ModelExecute", "prefill"), ("ModelExecute", "decode"), ("KVCache", "allocate"), ("KVCache", "free")}


# ---- reading ---------------------------------------------------------------------------------
def find_event_files(path: str) -> list[str]:
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist.")
    if os.path.isfile(path):
        return [path]
    found = [os.path.join(d, EVENTS_FILE) for d, _, files in os.walk(path) if EVENTS_FILE in files]
    if not found:
        raise ValueError(f"no {EVENTS_FILE} found under {path!r}.")
    return sorted(found)


def _valid(e) -> bool:
    if not isinstance(e, dict):
        return False
    ints = {"header": ("wall_ns", "perf_ns"), "span": ("start", "end"), "marker": ("t",)}.get(e.get("type"), ())
    if not all(isinstance(e.get(k), int) for k in ints):
        return False
    return e.get("type") != "span" or (isinstance(e.get("domain"), str) and isinstance(e.get("name"), str)
                                       and isinstance(e.get("attrs", {}), dict) and e["end"] >= e["start"])


def read_events(path: str, src: int) -> tuple[dict | None, list[dict], list[dict]]:
    """(header, spans, markers) of one file, times converted to wall-clock ns. A corrupt last
    line (a writer killed mid-line) is skipped with a warning; any other is an error."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    events = []
    for i, (n, line) in enumerate(lines):
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            e = None
        if not _valid(e) or (i == 0) != (e.get("type") == "header"):
            if i == len(lines) - 1:
                print(f"warning: {path}: line {n} is incomplete (the writer stopped mid-line); skipped.",
                      file=sys.stderr)
                break
            raise ValueError(f"{path}: line {n} is not a valid service profiler event.")
        events.append(e)
    if not events:
        return None, [], []
    header = events[0]
    offset = header["wall_ns"] - header["perf_ns"]
    spans, markers = [], []
    for e in events[1:]:
        if e["type"] == "span":
            spans.append(dict(domain=e["domain"], name=e["name"], start=e["start"] + offset,
                              end=e["end"] + offset, thread=(src, e.get("tid"), str(e.get("thread", ""))),
                              src=src, attrs=e.get("attrs") or {}))
        elif e["type"] == "marker":
            markers.append(dict(name=str(e.get("name")), t=e["t"] + offset, src=src))
    return header, spans, markers


# ---- tables ----------------------------------------------------------------------------------
def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _s(ns):
    return None if ns is None else ns / 1e9


def _ms(a, b):
    return None if a is None or b is None else (b - a) / 1e6


def build(spans: list[dict], markers: list[dict], pids: dict[int, int]) -> dict:
    spans.sort(key=lambda s: (s["start"], -s["end"]))
    by = collections.defaultdict(list)
    for s in spans:
        by[(s["domain"], s["name"]) if (s["domain"], s["name"]) in KNOWN else None].append(s)
    reqs: dict[str, dict] = {}

    def req(rid):
        return reqs.setdefault(str(rid), {"decodes": 0})
    for key, field in ((("Request", "arrive"), "arrive"), (("KVCache", "allocate"), "alloc"),
                       (("KVCache", "free"), "free")):
        for s in by[key]:
            if s["attrs"].get("request_id") is not None:
                req(s["attrs"]["request_id"]).setdefault(field, s)
    http = {str(s["attrs"]["request_id"]): s for s in by[("Request", "http")] if "request_id" in s["attrs"]}

    batch_rows, batches_by_thread = [], collections.defaultdict(list)
    for b in by[("Schedule", "batch")]:
        a = b["attrs"]
        ids = [str(r) for r in a["request_ids"]] if isinstance(a.get("request_ids"), list) else []
        b["ids"] = ids
        for rid in ids:
            r = req(rid)
            if a.get("phase") == "prefill":
                r.setdefault("prefill", b)
            else:
                r["decodes"] += 1
        batches_by_thread[b["thread"]].append(b)
        batch_rows.append(dict(step=_int(a.get("step")), phase=a.get("phase"), start_time=_s(b["start"]),
                               end_time=_s(b["end"]), duration_ms=_ms(b["start"], b["end"]),
                               batch_size=_int(a.get("batch_size")), num_tokens=_int(a.get("num_tokens")),
                               padded_tokens=_int(a.get("padded_tokens")), kv_len_max=_int(a.get("kv_len_max")),
                               request_ids=" ".join(ids)))

    forward_rows = []
    starts = {t: [b["start"] for b in bs] for t, bs in batches_by_thread.items()}
    for f in by[("ModelExecute", "prefill")] + by[("ModelExecute", "decode")]:
        i = bisect.bisect_right(starts.get(f["thread"], []), f["start"]) - 1
        b = batches_by_thread[f["thread"]][i] if i >= 0 and batches_by_thread[f["thread"]][i]["end"] >= f["end"] else None
        ba = b["attrs"] if b else {}
        forward_rows.append(dict(phase=f["name"], start_time=_s(f["start"]), end_time=_s(f["end"]),
                                 duration_ms=_ms(f["start"], f["end"]),
                                 batch_size=_int(f["attrs"].get("batch_size", ba.get("batch_size"))),
                                 num_tokens=_int(f["attrs"].get("num_tokens")), step=_int(ba.get("step"))))
    forward_rows.sort(key=lambda r: r["start_time"])

    # KV cache: slots in use and tokens held, per server process, at every allocate/free/decode.
    timeline = [(s["start"], s["name"], s) for k in (("KVCache", "allocate"), ("KVCache", "free")) for s in by[k]]
    timeline += [(b["end"], "decode", b) for b in by[("Schedule", "batch")] if b["attrs"].get("phase") == "decode"]
    timeline.sort(key=lambda x: x[0])
    state = collections.defaultdict(lambda: {"slots": 0, "held": {}, "total": 0})
    kv_rows, counters = [], []
    for t, action, s in timeline:
        st, a = state[s["src"]], s["attrs"]
        rid = None if a.get("request_id") is None else str(a.get("request_id"))
        if action == "decode":
            for r in s["ids"]:
                if r in st["held"]:
                    st["held"][r] += 1
                    st["total"] += 1
        else:
            if action == "allocate":
                st["slots"] += 1
                st["total"] -= st["held"].get(rid, 0)
                st["held"][rid] = _int(a.get("tokens")) or 0
                st["total"] += st["held"][rid]
            else:
                st["slots"] = max(0, st["slots"] - 1)
                st["total"] -= st["held"].pop(rid, 0)
            if _int(a.get("slots_used")) is not None:
                st["slots"] = a["slots_used"]
            kv_rows.append(dict(time=_s(t), action=action, request_id=rid, slot=_int(a.get("slot")),
                                tokens=_int(a.get("tokens")), slots_used=st["slots"], tokens_held=st["total"]))
        counters.append((t, s["src"], st["slots"], st["total"]))

    request_rows = []
    for rid, r in reqs.items():
        http_id = rid.rsplit("-", 1)[0]
        h, arrive, alloc, free, pre = http.get(http_id), r.get("arrive"), r.get("alloc"), r.get("free"), r.get("prefill")
        arrival = h["start"] if h else arrive["start"] if arrive else None
        first = pre["end"] if pre else None
        finish = free["start"] if free else None
        fa, aa = free["attrs"] if free else {}, arrive["attrs"] if arrive else {}
        out = _int(fa.get("output_tokens"))
        if out is None and pre:
            out = 1 + r["decodes"]
        prompt = _int(aa.get("prompt_tokens"))
        if prompt is None and alloc:
            prompt = _int(alloc["attrs"].get("tokens"))
        request_rows.append(dict(
            request_id=rid, http_id=http_id if h else None, arrival_time=_s(arrival),
            scheduled_time=_s(alloc["start"] if alloc else None), first_token_time=_s(first),
            finish_time=_s(finish), prompt_tokens=prompt, output_tokens=out, max_tokens=_int(aa.get("max_tokens")),
            finish_reason=fa.get("finish_reason"), queue_ms=_ms(arrival, alloc["start"] if alloc else None),
            ttft_ms=_ms(arrival, first), e2e_ms=_ms(arrival, finish),
            tpot_ms=(finish - first) / 1e6 / (out - 1) if None not in (finish, first, out) and out >= 2 else None,
            complete=int(bool(arrive and alloc and free)), _r=r, _http=h, _arrival=arrival))
    request_rows.sort(key=lambda x: (x["_arrival"] is None, x["_arrival"] or 0, x["request_id"]))
    return dict(spans=spans, markers=markers, by=by, pids=pids, request=request_rows, batch=batch_rows,
                forward=forward_rows, kvcache=kv_rows, counters=counters)


def _stats(values, keys=("mean", "p50", "p90", "p99", "min", "max")) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return dict(count=0)
    d = dict(count=len(v), mean=sum(v) / len(v), min=min(v), max=max(v))
    d.update({f"p{q}": percentile(v, q) for q in (50, 90, 99)})
    return {k: d[k] for k in ("count", *keys)}


def collected_seconds(spans: list[dict], markers: list[dict]) -> float:
    """Time covered by the spans of each collection period (enable to disable), so that periods
    with collection off do not dilute throughput; the union over server processes."""
    cuts = collections.defaultdict(list)       # per source: times where a period starts
    for m in markers:
        if m["name"] == "enable":
            cuts[m["src"]].append(m["t"])
    starts = {src: sorted(ts) for src, ts in cuts.items()}
    periods: dict[tuple, list[int]] = {}
    for s in spans:
        key = (s["src"], bisect.bisect_right(starts.get(s["src"], []), s["start"]))
        lo_hi = periods.setdefault(key, [s["start"], s["end"]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], s["start"]), max(lo_hi[1], s["end"])
    total, covered_to = 0, None
    for lo, hi in sorted(periods.values()):
        if covered_to is not None:
            lo = max(lo, covered_to)
        total += max(0, hi - lo)
        covered_to = hi if covered_to is None else max(covered_to, hi)
    return total / 1e9


def summaries(t: dict) -> dict[str, Table]:
    done = [r for r in t["request"] if r["complete"]]
    metrics = ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "prompt_tokens", "output_tokens")
    req = Table("request_summary", ["metric", "count", "mean", "p50", "p90", "p99", "min", "max"],
                [dict(metric=m, **_stats([r[m] for r in done])) for m in metrics])
    rows = []
    for phase in ("prefill", "decode", "all"):
        bs = [b for b in t["batch"] if phase == "all" or b["phase"] == phase]
        size, dur = _stats([b["batch_size"] for b in bs]), _stats([b["duration_ms"] for b in bs])
        tokens = sum(b["num_tokens"] or 0 for b in bs)
        padded = sum(b["padded_tokens"] or 0 for b in bs)
        rows.append(dict(phase=phase, count=len(bs), mean_batch_size=size.get("mean"), p50_batch_size=size.get("p50"),
                         p99_batch_size=size.get("p99"), max_batch_size=size.get("max"),
                         mean_duration_ms=dur.get("mean"), p50_duration_ms=dur.get("p50"),
                         p99_duration_ms=dur.get("p99"), total_tokens=tokens,
                         padding_waste=1 - tokens / padded if padded else None))
    batch = Table("batch_summary", list(rows[0]), rows)
    spans = t["spans"]
    duration = collected_seconds(spans, t["markers"])
    engines = len({b["src"] for b in t["by"][("Schedule", "batch")]}) or 1  # one per server process
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    out_tokens = sum(r["output_tokens"] or 0 for r in done)
    service = [("duration_s", duration), ("requests", len(done)),
               ("failed", sum(1 for r in done if r["finish_reason"] not in ("length", "stop"))),
               ("incomplete", len(t["request"]) - len(done)),
               ("request_throughput", per_s(len(done))), ("output_token_throughput", per_s(out_tokens)),
               ("total_token_throughput", per_s(out_tokens + sum(r["prompt_tokens"] or 0 for r in done))),
               ("mean_concurrency", per_s(sum(r["e2e_ms"] for r in done) / 1e3)),
               ("engine_busy_fraction", per_s(sum(b["duration_ms"] for b in t["batch"]) / 1e3 / engines)),
               ("steps", len(t["batch"])), ("events", len(spans) + len(t["markers"]))]
    return {"request_summary": req, "batch_summary": batch,
            "service_summary": Table("service_summary", ["metric", "value"], [dict(metric=k, value=v) for k, v in service])}


# ---- writing ---------------------------------------------------------------------------------
def _atomic(out_dir: str, name: str, write) -> str:
    tmp = os.path.join(out_dir, f".{name}.{os.getpid()}.tmp")  # same dir: the rename is atomic
    try:
        write(tmp)
        os.replace(tmp, os.path.join(out_dir, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
                            [[r.get(c) for c in tab.columns] for r in tab.rows])
        con.commit()
    finally:
        con.close()


def parse(path: str, output_path: str | None = None) -> dict:
    """Read every events file under `path`, write the outputs into `output_path` (default
    <path>/output); returns the tables. ValueError (nothing written) for unusable input."""
    files = find_event_files(path)
    spans, markers, pids = [], [], {}
    for src, f in enumerate(files):
        header, s, m = read_events(f, src)
        pids[src] = header.get("pid", src) if header else src
        spans += s
        markers += m
    t = build(spans, markers, pids)
    tables = {k: Table(k, COLUMNS[k], t[k]) for k in COLUMNS}
    tables.update(summaries(t))
    out = output_path or os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "output")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output path {out!r} cannot be created ({e.strerror}).") from None
    trace = chrome_trace(t)
    written = [_atomic(out, "chrome_tracing.json", lambda p: _write_json(p, trace))]
    written.append(_atomic(out, "profiler.db", lambda p: _write_db(p, {k: tables[k] for k in COLUMNS})))
    for name, tab in tables.items():
        written.append(_atomic(out, f"{name}.csv", tab.write_csv))
    return dict(files=files, out=out, written=written, tables=tables, events=len(spans) + len(markers))


def run(path: str, output_path: str | None = None) -> int:
    res = parse(path, output_path)
    svc = {r["metric"]: r["value"] for r in res["tables"]["service_summary"].rows}
    batches = res["tables"]["batch"].rows
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"Service profile: {res['events']} events from {len(res['files'])} file(s) over "
          f"{svc['duration_s']:.3f} s")
    print(f"  requests: {svc['requests']} complete, {svc['incomplete']} incomplete, {svc['failed']} failed; "
          f"steps: {svc['steps']} ({sum(b['phase'] == 'prefill' for b in batches)} prefill, "
          f"{sum(b['phase'] == 'decode' for b in batches)} decode)")
    print(f"  throughput: {fmt(svc['request_throughput'], '.2f')} req/s, "
          f"{fmt(svc['output_token_throughput'], '.1f')} output tok/s; "
          f"engine busy {fmt(svc['engine_busy_fraction'], '.1%')}")
    print(f"Wrote {res['out']}: {', '.join(res['written'])}")
    return 0
