"""Requests of a live server joined to its XLA capture: one JAX-backend server with the service
profiler on, an XLA capture (/start_profile ... /stop_profile) around 16 concurrent requests
in 4 slots, and its request spans sent over OTLP/HTTP to a stand-in collector in this process
(decoded with OpenTelemetry's own protobuf classes)."""
from __future__ import annotations

import glob
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading

import httpx
import pytest

from tests.servers import JAX, ROOT, SMALL, Server, switch_collection, wait_until
from tests.test_service_parse import send

pytestmark = [pytest.mark.slow, pytest.mark.server]
N = 16


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        super().__init__(("127.0.0.1", 0), _Receive)


class _Receive(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        body = ExportTraceServiceRequest()
        body.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for rs in body.resource_spans:
            for ss in rs.scope_spans:
                self.server.spans += list(ss.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "profiling", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PJRT_DEVICE": "CPU"})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("joined")
    collector = Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    cfg = tmp / "cfg.json"
    env = {"SERVICE_PROF_CONFIG_PATH": cfg, "VLLM_TORCH_PROFILER_DIR": tmp / "xla",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector.server_port}/v1/traces"}
    workload = [(3 + i % 9, 2 + i % 5) for i in range(N)]
    try:
        with Server([*SMALL, *JAX], env=env, log_path=str(tmp / "serve.log")) as srv:
            switch_collection(srv, cfg, 1)
            assert httpx.post(f"{srv.url}/start_profile", timeout=60).status_code == 200
            sent = send(srv.url, workload)
            r = httpx.post(f"{srv.url}/stop_profile", timeout=300)
            assert r.status_code == 200, r.text
            switch_collection(srv, cfg, 0)
            wait_until(lambda: len(collector.spans) >= N, 60, "the request spans to reach the collector")
        yield dict(tmp=tmp, run=str(tmp / "xla" / r.json()["run"]), sent=sent, service=str(tmp / "service_profile"), spans=collector.spans)
    finally:
        collector.shutdown()


def _joined(run: str, service: str, out) -> dict:
    proc = _cli("summarize", run, "--service", service, "--json", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    with open(out) as f:
        return json.load(f)


def test_every_request_in_the_window_has_a_row_joined_by_step_number(served, tmp_path):
    doc = _joined(served["run"], served["service"], tmp_path / "j.json")
    rows = {r["request_id"]: r for r in doc["requests"]["rows"]}
    assert set(rows) == {q["id"] + "-0" for q in served["sent"]}
    for r in rows.values():
        assert r["prefill_ms"] > 0 and r["ttft_ms"] > 0 and r["queue_ms"] is not None
    assert doc["request_coverage"]["attributed_ms"] == pytest.approx(doc["request_coverage"]["device_ms"], rel=0.01)
    # the service profiler's own TTFT (HTTP arrival to first token) is the row's
    parse = _cli("service", "parse", served["service"], "--output-path", str(tmp_path / "out"), "--capture",
                 served["run"])
    assert parse.returncode == 0 and f"requests joined to the capture by step number: {N}" in parse.stdout, parse.stderr
    con = sqlite3.connect(tmp_path / "out" / "profiler.db")
    service_ttft = dict(con.execute("select request_id, ttft_ms from request").fetchall())
    joined = dict(con.execute("select request_id, ttft_ms from requests").fetchall())
    assert len(joined) == N and all(joined[k] == pytest.approx(service_ttft[k]) for k in joined)


def _rewrite(src: str, dst: str, change) -> None:
    for path in glob.glob(os.path.join(src, "*", "events.jsonl")):
        out = os.path.join(dst, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(path) as f, open(out, "w") as g:
            for line in f:
                g.write(json.dumps(change(json.loads(line))) + "\n")


def test_the_join_uses_step_numbers_never_timestamps(served, tmp_path):
    """The service profile an hour off the capture's clock joins the same; with its step numbers
    moved, nothing joins."""
    def shifted(e):
        return {**e, "wall_ns": e["wall_ns"] + 3600 * 10**9} if e["type"] == "header" else e

    def renumbered(e):
        if e.get("name") == "batch" and "step" in e.get("attrs", {}):
            e["attrs"]["step"] += 10_000
        return e
    _rewrite(served["service"], str(tmp_path / "shifted"), shifted)
    _rewrite(served["service"], str(tmp_path / "renumbered"), renumbered)
    base = _joined(served["run"], served["service"], tmp_path / "a.json")["requests"]["rows"]
    moved = _joined(served["run"], str(tmp_path / "shifted"), tmp_path / "b.json")["requests"]["rows"]
    assert moved == base
    none = _joined(served["run"], str(tmp_path / "renumbered"), tmp_path / "c.json")["requests"]["rows"]
    proc = _cli("summarize", served["run"], "--json", str(tmp_path / "d.json"))
    alone = json.load(open(tmp_path / "d.json"))["requests"]["rows"]
    # no step number in common: the service profile adds nothing (the manifest's own figures)
    assert proc.returncode in (0, 1) and none == alone and none != base


def test_request_spans_reach_an_otlp_collector_with_step_time(served):
    spans = [s for s in served["spans"] if s.name == "llm_request"]
    attrs = [{a.key: a.value for a in s.attributes} for s in spans]
    ids = {a["gen_ai.request.id"].string_value for a in attrs}
    assert ids >= {q["id"] + "-0" for q in served["sent"]}
    for a in attrs:
        assert a["tpu.steps"].int_value >= 1 and a["tpu.prefill_step_ms"].double_value > 0
        assert a["gen_ai.latency.time_to_first_token"].double_value >= a["gen_ai.latency.time_in_queue"].double_value
