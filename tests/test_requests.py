"""Requests joined to device time, on real captures: the session's 6 requests in 4 slots (queueing,
packed prefill, requests finishing at different steps), steps tagged with request ids as
tpu-inference tags them, the timeline (Chrome JSON and Perfetto's protobuf, with flows from each
request to its steps) and the MCP server. Findings: tests/test_findings.py; a live server:
tests/test_requests_server.py."""
from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from profiling.analysis.analysis import Analysis
from profiling.analysis.requests import coverage, percentiles, request_table, shares
from profiling.export import chrome_trace, perfetto
from tests.captures import ROOT, proc_output, profiling_cli, profiling_env
from tests.foreign_captures import TAGGED_STEPS


@pytest.fixture(scope="module")
def req(requests_capture):
    assert requests_capture.proc.returncode == 0, proc_output(requests_capture.proc)
    return Analysis.load(requests_capture.run)


def test_request_shares_add_up_to_the_steps_device_time(req, requests_capture):
    rows = request_table(req).rows
    manifest = requests_capture.manifest()
    assert len(rows) == 6 and {r.request_id for r in rows} == {i for m in manifest for i in m["request_ids"]}
    busy = sum(s.busy_s() for s in req.steps) * 1e3
    device = sum(r.prefill_ms + r.decode_ms + r.padding_ms for r in rows)
    assert device == pytest.approx(busy, rel=0.01)
    total = sum(s.duration_s for s in req.steps) * 1e3
    assert device + sum(r.host_ms for r in rows) == pytest.approx(total, rel=0.01)
    assert coverage(req).pct == pytest.approx(100, abs=1)
    # the packed prefill of 3 prompts of 20 tokens: each a third of it, its padding counted apart
    first = req.steps[0]
    part = [s for s in shares(req) if s.step is first]
    assert len(part) == 3 and all(s.tokens == 20 for s in part)
    assert sum(s.padding_ms for s in part) == pytest.approx(first.busy_s() * 1e3 * 4 / 64, rel=1e-6)
    # requests finish at different steps: each rode in one decode step fewer than the one before
    assert {r.request_id: r.steps for r in rows} == {
        r.request_id: sum(r.request_id in m["request_ids"] for m in manifest) for r in rows}
    assert len({r.steps for r in rows}) >= 4


def test_a_queued_request_shows_its_wait_and_the_prefill_it_waited_behind(req, requests_capture):
    rows = {r.request_id: r for r in request_table(req).rows}
    manifest = requests_capture.manifest()
    prefills = [m for m in manifest if m["phase"] == "prefill"]
    last = prefills[-1]["request_ids"][0]       # the last to get a slot
    r = rows[last]
    assert r.prefill_step == prefills[-1]["step"]
    assert r.queue_ms > 10 * rows[prefills[0]["request_ids"][0]].queue_ms
    assert f"prefill {prefills[0]['step']} (3 req, 60 tok" in r.waited_behind and "decode step(s)" in r.waited_behind
    # TTFT = queue + its prefill step, that step = its share + the others'
    step = next(s for s in req.steps if s.step == r.prefill_step)
    assert r.queue_ms + step.duration_s * 1e3 + r.ttft_other_ms == pytest.approx(r.ttft_ms)
    assert r.prefill_ms + r.ttft_padding_ms + r.ttft_host_ms + r.ttft_batched_ms == pytest.approx(
        step.duration_s * 1e3)
    p = percentiles(request_table(req)).rows
    assert [x.stat for x in p] == ["p50", "p99", "mean"] and p[1].queue_ms >= p[0].queue_ms > 0


def test_summarize_prints_requests_and_findings_and_gates_on_them(req, requests_capture, tmp_path):
    from profiling.analysis.findings import findings
    run = requests_capture.run
    pad = max(f.value for f in findings(req).rows if f.rule == "padding")
    proc = profiling_cli("summarize", run, "--json", str(tmp_path / "s.json"), "--csv", str(tmp_path / "c"),
                         "--fail-on", f"padding>{pad - 1:.1f}%", "--fail-on", "recompile>0")
    assert proc.returncode == 1, proc_output(proc)
    assert "== requests ==" in proc.stdout and "== findings: what to fix first ==" in proc.stdout
    assert f"fail-on padding>{float(f'{pad - 1:.1f}'):g}: padding (" in proc.stderr and "recompile" not in proc.stderr
    doc = json.load(open(tmp_path / "s.json"))
    assert len(doc["requests"]["rows"]) == 6 and doc["request_coverage"]["requests"] == 6
    assert {f["rule"] for f in doc["findings"]["rows"]} >= {"padding", "queueing"}
    assert os.path.isfile(tmp_path / "c_requests.csv") and os.path.isfile(tmp_path / "c_findings.csv")
    assert profiling_cli("summarize", run, "--fail-on", f"padding>{pad + 1:.1f}%").returncode == 0
    for bad in ("padding>>3", "speed>3%", "padding"):
        proc = profiling_cli("summarize", run, "--fail-on", bad)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --fail-on"), proc_output(proc)


def test_steps_tagged_with_request_ids_as_tpu_inference_tags_them(tmp_path):
    """No manifest: the request ids come from the step annotation's arguments."""
    proc = subprocess.run([sys.executable, "-m", "tests.foreign_captures", "tagged", str(tmp_path)], cwd=ROOT,
                          env=profiling_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc_output(proc)
    a = Analysis.load(glob.glob(str(tmp_path / "tagged" / "plugins" / "profile" / "*"))[0])
    assert a.rules.steps.source == "engine" and len(a.steps) == len(TAGGED_STEPS)
    rows = {r.request_id: r for r in request_table(a).rows}
    assert {k: v.steps for k, v in rows.items()} == {"a": 3, "b": 4}
    assert sum(r.prefill_ms + r.decode_ms + r.padding_ms for r in rows.values()) == pytest.approx(
        sum(s.busy_s() for s in a.steps) * 1e3, rel=0.01)
    # no tokens per request in the annotation: equal shares
    first = [s for s in shares(a) if s.step is a.steps[0]]
    assert first[0].device_ms == pytest.approx(first[1].device_ms)


# ---- one timeline ---------------------------------------------------------------------------------
def test_chrome_trace_flows_lead_from_each_request_to_its_steps(req):
    events = chrome_trace.build(req)["traceEvents"]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and set(starts) == set(ends)
    steps = [e for e in events if e["ph"] == "X" and e.get("tid") == chrome_trace.STEPS_TID and e["pid"] == 1]
    reached = {}
    for fid, f in ends.items():
        step = next(s for s in steps if s["ts"] <= f["ts"] <= s["ts"] + s["dur"])
        reached.setdefault(starts[fid]["tid"], []).append(int(step["name"].split()[1]))
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["pid"] == 2 and "tid" in e}
    by_request = {names[t].split()[1]: sorted(v) for t, v in reached.items()}
    expected = {}
    for s in shares(req):
        expected.setdefault(s.request_id, []).append(s.step.step)
    assert by_request == {k: sorted(v) for k, v in expected.items()}


def _trace_processor_shell() -> str | None:
    """trace_processor's native binary, if this machine has it: the `perfetto` package fetches it
    from Google's storage on first use, which a machine that reaches only package registries
    cannot do; TRACE_PROCESSOR_SHELL or an earlier download gives it."""
    env = os.environ.get("TRACE_PROCESSOR_SHELL")
    found = glob.glob(os.path.expanduser("~/.local/share/perfetto/prebuilts/trace_processor_shell-*"))
    return env or shutil.which("trace_processor_shell") or (found[0] if found else None)


def test_perfetto_trace_links_each_request_to_its_steps(req, tmp_path):
    """Read back with Perfetto's own protobuf schema: every flow a request's slice starts ends at
    the slice of a step it rode in."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
    trace = Trace()
    trace.ParseFromString(perfetto.build(req))
    names = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    begins = [p.track_event for p in trace.packet if p.HasField("track_event")
              and p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN]
    started = {f: names[e.track_uuid] for e in begins for f in e.flow_ids}
    ended = {f: e.name for e in begins for f in e.terminating_flow_ids}
    assert started and set(started) == set(ended)
    got = {}
    for f, track in started.items():
        got.setdefault(track.removeprefix("request "), []).append(int(ended[f].split()[1]))
    expected = {}
    for s in shares(req):
        expected.setdefault(s.request_id, []).append(s.step.step)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}
    counters = [p for p in trace.packet if p.HasField("track_event") and p.track_event.type == TrackEvent.TYPE_COUNTER]
    assert len(counters) == 2 * len(req.steps)


def test_perfetto_trace_loads_in_trace_processor_and_sql_finds_each_requests_flows(req, tmp_path):
    shell = _trace_processor_shell()
    if shell is None:
        pytest.skip("trace_processor_shell is not on this machine (perfetto downloads it from outside the package "
                    "registries); set TRACE_PROCESSOR_SHELL to run this")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig
    path = perfetto.write(req, str(tmp_path / "t.pftrace"))
    with TraceProcessor(trace=path, config=TraceProcessorConfig(bin_path=shell)) as tp:
        rows = tp.query("select t.name as track, s.name as step from flow f join slice r on f.slice_out = r.id "
                        "join track t on r.track_id = t.id join slice s on f.slice_in = s.id").as_pandas_dataframe()
    expected = {}
    for s in shares(req):
        expected.setdefault(f"request {s.request_id}", []).append(f"{s.step.phase} {s.step.step}")
    got = rows.groupby("track")["step"].apply(sorted).to_dict()
    assert got == {k: sorted(v) for k, v in expected.items()}


# ---- agents ---------------------------------------------------------------------------------------
def test_mcp_server_answers_the_sdk_client(requests_capture):
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    run = requests_capture.run

    async def session():
        params = StdioServerParameters(command=sys.executable, args=["-m", "profiling", "mcp"], cwd=ROOT,
                                       env={k: v for k, v in profiling_env().items() if k in ("PYTHONPATH", "PATH",
                                                                                                "PJRT_DEVICE")})
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            found = await s.call_tool("findings", {"path": run})
            one = await s.call_tool("request", {"path": run, "request_id": rid})
            text = await s.call_tool("summarize", {"path": run, "top": 3})
            missing = await s.call_tool("request", {"path": run, "request_id": "no-such-request"})
            delta = await s.call_tool("compare", {"a": run, "b": run})
            return tools, found, one, text, missing, delta
    rows = request_table(Analysis.load(run)).rows
    rid = max(rows, key=lambda r: r.queue_ms).request_id
    tools, found, one, text, missing, delta = asyncio.run(session())
    assert tools == {"summarize", "compare", "findings", "request"}
    assert not found.is_error and "queueing" in {f["rule"] for f in found.structured_content["findings"]}
    got = one.structured_content["request"]
    assert got["request_id"] == rid and got["queue_ms"] == pytest.approx(max(r.queue_ms for r in rows))
    assert len(one.structured_content["steps"]) == got["steps"]
    assert "== findings: what to fix first ==" in text.content[0].text
    assert missing.is_error and "rode in none of this capture's steps" in missing.content[0].text
    assert not delta.is_error and "prefill" in delta.content[0].text
