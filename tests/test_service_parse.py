"""`python -m profiling service parse` on events recorded by a real `python -m tpu_engine.serve`
(service profiler switched on and off through its config file, an XLA capture of the same window).
One module, over 300 lines, because every test reads the one served and parsed run (`served`).
Synthetic inputs, where every figure is known by hand: tests/test_service_tables.py."""
import collections
import concurrent.futures
import csv
import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.servers import JAX, ROOT, SMALL, Server, switch_collection

pytestmark = [pytest.mark.slow, pytest.mark.server]

ENV = {**os.environ, "PJRT_DEVICE": "CPU"}
# (prompt length, max_tokens): mixed, with a one-token request (no decode, no TPOT).
WORKLOAD = [(5, 1), (9, 2), (3, 7), (12, 4), (6, 9), (4, 3), (10, 6), (7, 5), (8, 8), (11, 2)]
OUTPUTS = ["chrome_tracing.json", "profiler.db", "request.csv", "batch.csv", "forward.csv", "kvcache.csv",
           "compiles.csv", "request_summary.csv", "batch_summary.csv", "service_summary.csv"]


def complete(url: str, i: int, prompt_len: int, max_tokens: int) -> dict:
    prompt = [(37 * i + 11 * j) % 1000 + 1 for j in range(prompt_len)]
    r = httpx.post(f"{url}/v1/completions", timeout=120,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return dict(id=r.json()["id"], prompt_len=prompt_len, max_tokens=max_tokens, body=r.json())


def send(url: str, workload, offset: int = 0) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(len(workload)) as pool:
        futures = [pool.submit(complete, url, offset + i, p, k) for i, (p, k) in enumerate(workload)]
        return [f.result() for f in futures]


def parse_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "profiling", "service", "parse", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def read_text(path) -> str:
    with open(path) as f:
        return f.read()


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One JAX-backend server: 2 requests with collection off, the WORKLOAD with it on (inside an XLA
    capture), 2 more with it off again; then the events parsed with the CLI."""
    tmp = str(tmp_path_factory.mktemp("service"))
    cfg = os.path.join(tmp, "cfg.json")
    env = {"SERVICE_PROF_CONFIG_PATH": cfg, "VLLM_TORCH_PROFILER_DIR": os.path.join(tmp, "xla")}
    with Server([*SMALL, *JAX], env=env, log_path=os.path.join(tmp, "serve.log")) as srv:
        with open(cfg) as f:
            assert json.load(f)["enable"] == 0
        before = send(srv.url, [(4, 3), (6, 2)], offset=100)
        switch_collection(srv, cfg, 1)
        r = httpx.post(f"{srv.url}/start_profile", timeout=60)
        assert r.status_code == 200, r.text
        sent = send(srv.url, WORKLOAD)
        r = httpx.post(f"{srv.url}/stop_profile", timeout=300)
        assert r.status_code == 200, r.text
        run = os.path.join(tmp, "xla", r.json()["run"])
        switch_collection(srv, cfg, 0)
        after = send(srv.url, [(5, 2), (3, 4)], offset=200)
    events = glob.glob(os.path.join(tmp, "service_profile", "*", "events.jsonl"))
    assert len(events) == 1, events
    out = os.path.join(tmp, "out")
    res = parse_cli(os.path.join(tmp, "service_profile"), "--output-path", out)
    assert res.returncode == 0, res.stderr
    return dict(tmp=tmp, sent=sent, before=before, after=after, run=run, events=events[0], out=out, stdout=res.stdout)


def spans_by_request(events_path: str) -> collections.Counter:
    """Spans that name a request (engine id or HTTP id), counted per HTTP id."""
    counts = collections.Counter()
    with open(events_path) as f:
        for line in f:
            e = json.loads(line)
            if e["type"] != "span":
                continue
            ids = [e["attrs"]["request_id"]] if "request_id" in e["attrs"] else e["attrs"].get("request_ids", [])
            for rid in ids:
                counts[rid if e["name"] == "http" else rid.rsplit("-", 1)[0]] += 1
    return counts


# ---- the parse of a real run -----------------------------------------------------------------
def test_outputs_written(served):
    assert sorted(os.listdir(served["out"])) == sorted(OUTPUTS)  # no temp files left behind
    assert f"{len(WORKLOAD)} complete" in served["stdout"], served["stdout"]
    assert "req/s" in served["stdout"] and "steps:" in served["stdout"]


def test_requests(served):
    rows = read_csv(os.path.join(served["out"], "request.csv"))
    assert len(rows) == len(WORKLOAD)
    by_id = {r["request_id"]: r for r in rows}
    for q in served["sent"]:
        r = by_id[q["id"] + "-0"]
        assert r["http_id"] == q["id"] and r["complete"] == "1"
        assert int(r["prompt_tokens"]) == q["prompt_len"] and int(r["max_tokens"]) == q["max_tokens"]
        assert int(r["output_tokens"]) == q["max_tokens"] == q["body"]["usage"]["completion_tokens"]
        assert r["finish_reason"] == "length"
        t = [float(r[k]) for k in ("arrival_time", "scheduled_time", "first_token_time", "finish_time")]
        assert t == sorted(t)
        assert 0 <= float(r["queue_ms"]) <= float(r["ttft_ms"]) <= float(r["e2e_ms"])
        assert (r["tpot_ms"] == "") == (q["max_tokens"] < 2)


def test_batches_match_xla_manifest(served):
    batches = read_csv(os.path.join(served["out"], "batch.csv"))
    with open(os.path.join(served["run"], "manifest.jsonl")) as f:
        manifest = [json.loads(line) for line in f if line.strip()]
    got = {int(b["step"]): (b["phase"], int(b["batch_size"]), b["request_ids"].split()) for b in batches}
    want = {m["step"]: (m["phase"], m["batch_size"], list(m["request_ids"])) for m in manifest}
    assert got == want
    engine_ids = {q["id"] + "-0" for q in served["sent"]}
    assert {rid for b in batches for rid in b["request_ids"].split()} == engine_ids
    # every request: one prefill, then one decode batch per further token
    for q in served["sent"]:
        phases = [b["phase"] for b in batches if q["id"] + "-0" in b["request_ids"].split()]
        assert phases == ["prefill"] + ["decode"] * (q["max_tokens"] - 1)

    forwards = read_csv(os.path.join(served["out"], "forward.csv"))
    assert [(int(f["step"]), f["phase"]) for f in forwards] == [(int(b["step"]), b["phase"]) for b in batches]
    tokens = {m["step"]: m["num_tokens"] for m in manifest}
    for f, b in zip(forwards, batches):
        assert float(b["start_time"]) <= float(f["start_time"]) <= float(f["end_time"]) <= float(b["end_time"])
        assert int(f["batch_size"]) == int(b["batch_size"])
        # a prefill's tokens are its prompts' (the default symbols sum them), a decode's one per sequence
        assert int(f["num_tokens"]) == tokens[int(f["step"])], (f, tokens[int(f["step"])])


def test_kvcache(served):
    rows = read_csv(os.path.join(served["out"], "kvcache.csv"))
    reqs = {r["request_id"]: r for r in read_csv(os.path.join(served["out"], "request.csv"))}
    assert collections.Counter(r["action"] for r in rows) == {"allocate": len(WORKLOAD), "free": len(WORKLOAD)}
    assert (rows[-1]["slots_used"], rows[-1]["tokens_held"]) == ("0", "0")
    assert max(int(r["slots_used"]) for r in rows) <= 4
    for r in rows:
        q = reqs[r["request_id"]]
        if r["action"] == "allocate":
            assert int(r["tokens"]) == int(q["prompt_tokens"])
        else:  # the tokens the freed slot held: the prompt and every output but the last
            assert int(r["tokens"]) == int(q["prompt_tokens"]) + int(q["output_tokens"]) - 1
    trace = load_json(os.path.join(served["out"], "chrome_tracing.json"))
    counters = collections.defaultdict(list)
    for e in sorted((e for e in trace["traceEvents"] if e["ph"] == "C"), key=lambda e: e["ts"]):
        counters[e["name"]].append(next(iter(e["args"].values())))
    assert set(counters) == {"KV slots used", "KV tokens held"}
    assert counters["KV slots used"][-1] == counters["KV tokens held"][-1] == 0
    assert max(counters["KV tokens held"]) > 0


def test_chrome_trace(served):
    trace = load_json(os.path.join(served["out"], "chrome_tracing.json"))
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] in ("ms", "ns")
    names, processes, slices = {}, {}, collections.defaultdict(list)
    for e in trace["traceEvents"]:
        assert {"ph", "pid", "tid", "ts"} <= set(e), e
        if e["ph"] == "M" and e["name"] == "process_name":
            processes[e["args"]["name"]] = e["pid"]
        elif e["ph"] == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e["ph"] == "X":
            assert e["dur"] >= 0 and e["ts"] >= 0, e
            slices[(e["pid"], e["tid"])].append(e)
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
    assert {"Requests", "Engine"} <= set(processes)
    for key, xs in slices.items():  # X slices on one track nest
        assert key in names
        stack = []
        for e in sorted(xs, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1] <= e["ts"] + 1e-3:
                stack.pop()
            assert not stack or e["ts"] + e["dur"] <= stack[-1] + 1e-3, (names[key], e)
            stack.append(e["ts"] + e["dur"])
    request_tracks = {n for (pid, _), n in names.items() if pid == processes["Requests"]}
    assert request_tracks == {q["id"] + "-0" for q in served["sent"]}
    for (pid, tid), xs in slices.items():
        if pid == processes["Requests"]:
            q = next(q for q in served["sent"] if q["id"] + "-0" == names[(pid, tid)])
            want = {"http", "queued", "prefill"} | ({"decode"} if q["max_tokens"] > 1 else set())
            assert sorted(e["name"] for e in xs) == sorted(want)
    engine = {n for (pid, _), n in names.items() if pid == processes["Engine"]}
    assert {n.split()[-1] for n in engine} == {"step", "batch", "forward"}
    batch_slices = [e for (pid, tid), xs in slices.items() if names[(pid, tid)].endswith("batch") for e in xs]
    assert len(batch_slices) == len(read_csv(os.path.join(served["out"], "batch.csv")))
    assert {e["name"] for e in batch_slices} == {"prefill", "decode"}
    assert all({"step", "batch_size", "num_tokens", "request_ids"} <= set(e["args"]) for e in batch_slices)
    instants = [e["name"] for e in trace["traceEvents"] if e["ph"] == "i"]
    assert instants == ["collection enable", "collection disable"]


def test_database_matches_csvs(served):
    con = sqlite3.connect(os.path.join(served["out"], "profiler.db"))
    try:
        for table in ("request", "batch", "forward", "kvcache"):
            rows = read_csv(os.path.join(served["out"], f"{table}.csv"))
            cur = con.execute(f"SELECT * FROM {table}")
            assert [d[0] for d in cur.description] == list(rows[0])
            assert len(cur.fetchall()) == len(rows)
        ids = {r[0] for r in con.execute("SELECT request_id FROM request WHERE complete = 1")}
        assert ids == {q["id"] + "-0" for q in served["sent"]}
    finally:
        con.close()


def test_summaries(served):
    out = served["out"]
    svc = {r["metric"]: r["value"] for r in read_csv(os.path.join(out, "service_summary.csv"))}
    n = len(WORKLOAD)
    assert int(svc["requests"]) == n and int(svc["incomplete"]) == 0 and int(svc["failed"]) == 0
    assert int(svc["steps"]) == len(read_csv(os.path.join(out, "batch.csv")))
    assert float(svc["duration_s"]) > 0 and 0 < float(svc["engine_busy_fraction"]) <= 1
    assert float(svc["output_token_throughput"]) == pytest.approx(
        sum(k for _, k in WORKLOAD) / float(svc["duration_s"]))
    req = {r["metric"]: r for r in read_csv(os.path.join(out, "request_summary.csv"))}
    for m in ("ttft_ms", "e2e_ms", "queue_ms", "prompt_tokens", "output_tokens"):
        assert int(req[m]["count"]) == n
    assert int(req["tpot_ms"]["count"]) == sum(k >= 2 for _, k in WORKLOAD)
    assert float(req["output_tokens"]["max"]) == max(k for _, k in WORKLOAD)
    batch = {r["phase"]: r for r in read_csv(os.path.join(out, "batch_summary.csv"))}
    # Waiting prompts are packed into one prefill step: each request is prefilled exactly once,
    # in as many steps as the arrivals allowed.
    prefills = [r for r in read_csv(os.path.join(out, "batch.csv")) if r["phase"] == "prefill"]
    assert int(batch["prefill"]["count"]) == len(prefills) and 1 <= len(prefills) <= n
    assert sum(int(r["batch_size"]) for r in prefills) == n
    assert int(batch["decode"]["count"]) + len(prefills) == int(batch["all"]["count"]) == int(svc["steps"])
    assert int(batch["all"]["total_tokens"]) == sum(p for p, _ in WORKLOAD) + sum(k - 1 for _, k in WORKLOAD)


def test_collection_toggle(served):
    """Requests served with "enable": 0 (before and after) leave no spans; the others do."""
    counts = spans_by_request(served["events"])
    for q in served["before"] + served["after"]:
        assert counts[q["id"]] == 0, q["id"]
    for q in served["sent"]:
        # arrive, http, allocate, free, and one batch per output token
        assert counts[q["id"]] == 4 + q["max_tokens"], (q, counts[q["id"]])
    with open(served["events"]) as f:
        markers = [e["name"] for e in map(json.loads, f) if e["type"] == "marker"]
    assert markers == ["enable", "disable"]


# ---- bad input -------------------------------------------------------------------------------
def assert_one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dir(tmp_path):
    r = parse_cli(str(tmp_path / "nope"))
    assert_one_line_error(r, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_no_events_file(tmp_path):
    (tmp_path / "sub").mkdir()
    r = parse_cli(str(tmp_path))
    assert_one_line_error(r, "no events.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["sub"]


def test_corrupt_middle_line(served, tmp_path):
    lines = read_text(served["events"]).splitlines()
    lines[len(lines) // 2] = lines[len(lines) // 2][:25]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text("\n".join(lines) + "\n")
    r = parse_cli(str(tmp_path))
    assert_one_line_error(r, f"line {len(lines) // 2 + 1}")
    assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(tmp_path / "run") == ["events.jsonl"]


def test_truncated_last_line_is_skipped(served, tmp_path):
    """A server killed mid-write leaves half a line at the end: skipped with a warning."""
    text = read_text(served["events"])
    last_start = text.rstrip("\n").rfind("\n") + 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text(text[:last_start + 30])
    r = parse_cli(str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "incomplete" in r.stderr
    assert sorted(os.listdir(tmp_path / "output")) == sorted(OUTPUTS)
    assert len(read_csv(tmp_path / "output" / "request.csv")) == len(WORKLOAD)


def test_merges_event_files_below_a_parent(served, tmp_path):
    """Every events.jsonl below the dir is read (one per server process)."""
    for name in ("a", "b/c"):
        os.makedirs(tmp_path / name)
    shutil.copy(served["events"], tmp_path / "a" / "events.jsonl")
    r = parse_cli(str(tmp_path), "--output-path", str(tmp_path / "o1"))
    assert r.returncode == 0, r.stderr
    assert "from 1 file(s)" in r.stdout
    shutil.copy(served["events"], tmp_path / "b" / "c" / "events.jsonl")
    r = parse_cli(str(tmp_path), "--output-path", str(tmp_path / "o2"))
    assert r.returncode == 0, r.stderr
    assert "from 2 file(s)" in r.stdout
    one = read_csv(tmp_path / "o1" / "batch.csv")
    two = read_csv(tmp_path / "o2" / "batch.csv")
    assert len(two) == 2 * len(one)
