"""The profiling plugin on a live server: XLA captures through /start_profile and /stop_profile,
a custom symbol YAML (attributes recorded; unknown symbols, bad expressions and handlers
reported), a malformed YAML, and the server's own bad settings."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from profiling.runs.record import read_manifest
from tests.servers import ROOT, SMALL, Server, switch_collection
from tpu_engine.config import DEFAULT_MODEL, REGISTRY

pytestmark = [pytest.mark.slow, pytest.mark.server]

CUSTOM_YAML = """
- symbol: tpu_engine.engine:LLMEngine.validate
  domain: Custom
  name: validate
  attributes:
    - name: prompt_len
      expr: prompt | len
    - name: max_tokens
      expr: params | attr max_tokens | str
    - name: nothing
      expr: params | attr no_such_thing
- symbol: tpu_engine.engine:LLMEngine.no_such_method
  domain: Custom
- symbol: tpu_engine.serve.api:OpenAIServer._usage
  domain: Custom
  name: usage
  attributes:
    - name: total
      expr: return['total_tokens']
    - name: bad
      expr: return || len
- symbol: tpu_engine.engine:LLMEngine.has_unfinished_requests
  domain: Custom
  handler: tests.no_such_module:handler
- symbol: tpu_engine.engine:LLMEngine.num_running
  domain: Custom
  handler: os:system
  attributes:
    - name: leak
      expr: args[0] | attr __class__
"""


def _complete(url, prompt, max_tokens):
    r = httpx.post(f"{url}/v1/completions", timeout=120,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()


def _spans(root):
    out = []
    for path in glob.glob(os.path.join(root, "**", "events.jsonl"), recursive=True):
        with open(path) as f:
            out += [e for e in map(json.loads, f) if e["type"] == "span"]
    return out


@pytest.fixture(scope="module")
def custom_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("custom")
    (tmp / "symbols.yaml").write_text(CUSTOM_YAML)
    env = {"SERVICE_PROF_CONFIG_PATH": tmp / "config.json", "PROFILING_SYMBOLS_PATH": tmp / "symbols.yaml",
           "VLLM_TORCH_PROFILER_DIR": tmp / "xla", "PROFILING_HANDLERS": "tests.no_such_module:handler"}
    with Server(SMALL, env=env) as srv:
        srv.tmp = tmp
        yield srv


def test_custom_symbols_record_their_attributes_and_problems_are_reported(custom_server):
    srv, tmp = custom_server, custom_server.tmp
    log = srv.log()
    assert "wrote a default config" in log and json.load(open(tmp / "config.json"))["enable"] == 0
    assert "LLMEngine.no_such_method: 'LLMEngine' has no attribute 'no_such_method'; skipped." in log
    assert "attribute 'bad': expression 'return || len' is not valid" in log
    assert "handler 'tests.no_such_module:handler' cannot be imported" in log and "using the timer" in log
    # a handler nobody listed is never imported, and an expression may not walk dunder attributes
    assert "handler 'os:system' is not allowed (only the shipped handlers and those listed in " \
           "PROFILING_HANDLERS); using the timer." in log
    assert "attribute 'leak': expression 'args[0] | attr __class__' is not valid (attr __class__ is private" in log
    switch_collection(srv, tmp / "config.json", 1)
    prompts = [[1, 2, 3], list(range(1, 12))]
    for p in prompts:
        _complete(srv.url, p, 4)
    switch_collection(srv, tmp / "config.json", 0)
    spans = _spans(tmp)
    validate = [s for s in spans if s["name"] == "validate"]
    assert {s["attrs"]["prompt_len"] for s in validate} == {3, 11}
    assert all(s["attrs"]["max_tokens"] == "4" for s in validate)
    assert all(s["attrs"]["nothing.error"].startswith("AttributeError") and "nothing" not in s["attrs"]
               for s in validate)
    usage = [s for s in spans if s["name"] == "usage"]
    assert sorted(s["attrs"]["total"] for s in usage) == [7, 15]
    # the timer stood in for the handler; the name defaults to the attribute chain
    assert any(s["name"] == "LLMEngine.has_unfinished_requests" and s["domain"] == "Custom" for s in spans)
    assert srv.healthy()


def test_enable_switch_starts_and_stops_collection_at_run_time(custom_server):
    srv, cfg = custom_server, custom_server.tmp / "config.json"
    before = len(_spans(srv.tmp))
    _complete(srv.url, [5, 6], 2)                                 # disabled: nothing recorded
    switch_collection(srv, cfg, 1)
    _complete(srv.url, [5, 6, 7], 2)
    switch_collection(srv, cfg, 0)                                # all recorded is on disk now
    _complete(srv.url, [5, 6, 7, 8], 2)                           # disabled again
    switch_collection(srv, cfg, 1)                                # (a round trip flushes anything held)
    switch_collection(srv, cfg, 0)
    new = [s["attrs"]["total"] for s in _spans(srv.tmp)[before:] if s["name"] == "usage"]
    assert new == [5]


def test_start_and_stop_profile_capture_prefill_and_decode_of_live_traffic(custom_server):
    srv = custom_server
    r = httpx.post(f"{srv.url}/start_profile", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "profiling"
    again = httpx.post(f"{srv.url}/start_profile", timeout=60)
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"]
    _complete(srv.url, list(range(1, 20)), 5)
    r = httpx.post(f"{srv.url}/stop_profile", timeout=300)
    assert r.status_code == 200, r.text
    result = r.json()
    assert os.path.dirname(result["run"]) == "plugins/profile"    # relative: no server path in answers
    run = str(srv.tmp / "xla" / result["run"])
    assert re.fullmatch(r"\d{4}(_\d\d){5}_serve-prefill-decode", os.path.basename(run)), run
    assert [f for f in os.listdir(run) if f.endswith(".xplane.pb")] == [f"{socket.gethostname()}.xplane.pb"]
    assert not glob.glob(str(srv.tmp / "xla" / ".staging-*"))
    assert len(result["steps"]["prefill"]) == 1 and len(result["steps"]["decode"]) == 4
    rows = read_manifest(run)
    assert sorted(r.step for r in rows) == sorted(result["steps"]["prefill"] + result["steps"]["decode"])
    info = json.load(open(os.path.join(run, "run_info.json")))
    assert info["verification"]["steps"] == result["steps"] and "trace_viewer@" in info["verification"]["xprof_tools"]
    # the same run record as an offline capture: compiles, and peaks said to be unmeasured on CPU
    assert info["window"]["kind"] == "server" and info["engine"]["model"] == DEFAULT_MODEL
    assert info["model_config"]["num_hidden_layers"] == REGISTRY[DEFAULT_MODEL]["num_hidden_layers"]
    assert info["compiles"]["warmup"]["compiles"] > 0 and info["compiles"]["profiled"]["compiles"] == 0
    assert info["peaks"]["flops_per_s"] is None and info["peaks"]["source"].startswith("not measured")
    assert result["problems"] == []
    summary = subprocess.run([sys.executable, "-m", "profiling", "summarize", run], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
    assert summary.returncode == 0, summary.stderr
    phases = {line.split()[0]: int(line.split()[1]) for line in summary.stdout.splitlines()
              if line.split()[:1] in (["prefill"], ["decode"]) and line.split()[1].isdigit()}
    assert phases == {"prefill": 1, "decode": 4}, summary.stdout
    assert "profiled passes: 0 compilation(s)" in summary.stdout and "no captured step compiled." in summary.stdout
    assert "peaks: not measured" in summary.stdout and "0.0 GFLOP/s" not in summary.stdout
    stop = httpx.post(f"{srv.url}/stop_profile", timeout=60)
    assert stop.status_code == 409 and "no profile capture is running" in stop.json()["error"]["message"]


def test_sigterm_with_a_capture_open_saves_it(custom_server):
    """Last of custom_server's tests (it stops the server): SIGTERM, what containers and
    systemd send, saves an open capture as SIGINT does (uvicorn re-raises the signal once it
    has stopped serving, which used to kill the process before the shutdown hooks ran)."""
    srv = custom_server
    before = set(glob.glob(str(srv.tmp / "xla" / "plugins" / "profile" / "*")))
    assert httpx.post(f"{srv.url}/start_profile", timeout=60).status_code == 200
    _complete(srv.url, [4, 5, 6], 3)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(120) == 0, srv.tail()
    new = set(glob.glob(str(srv.tmp / "xla" / "plugins" / "profile" / "*"))) - before
    assert len(new) == 1 and "Capture (open at shutdown)" in srv.log() and "Traceback" not in srv.log()
    info = json.load(open(os.path.join(new.pop(), "run_info.json")))
    assert info["verification"]["steps"]["prefill"] and info["verification"]["steps"]["decode"]


def test_malformed_symbols_yaml_is_reported_and_the_server_serves(tmp_path):
    """Also: a capture still open when the server is interrupted is saved whole."""
    (tmp_path / "symbols.yaml").write_text("- symbol: tpu_engine.engine:LLMEngine.step\n  attributes: [\n")
    env = {"SERVICE_PROF_CONFIG_PATH": tmp_path / "config.json", "PROFILING_SYMBOLS_PATH": tmp_path / "symbols.yaml",
           "VLLM_TORCH_PROFILER_DIR": tmp_path / "xla"}
    # The smallest server that serves these requests: one slot of 16 tokens, 5 shapes to compile.
    with Server(["--max-model-len", "16", "--max-num-seqs", "1"], env=env) as srv:
        assert "symbols.yaml' is not valid YAML at line 3" in srv.log()
        assert "nothing is instrumented" in srv.log()
        assert len(_complete(srv.url, [1, 2, 3], 3)["choices"][0]["token_ids"]) == 3
        assert srv.healthy()
        assert httpx.post(f"{srv.url}/start_profile", timeout=30).status_code == 200
        _complete(srv.url, [4, 5, 6], 3)
        assert srv.stop() == 0                                   # SIGINT with the capture open
    runs = glob.glob(str(tmp_path / "xla" / "plugins" / "profile" / "*_serve-*"))
    assert len(runs) == 1 and not glob.glob(str(tmp_path / "xla" / ".staging-*"))
    info = json.load(open(os.path.join(runs[0], "run_info.json")))
    assert info["verification"]["steps"] == {"prefill": [3], "decode": [4, 5]}   # the second request
    assert [r.step for r in read_manifest(runs[0])] == [3, 4, 5]


def _serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tpu_engine.serve", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "PJRT_DEVICE": "CPU", **(env or {})})


@pytest.mark.parametrize("case", ["port in use", "bad config", "unwritable capture dir", "bad flag value",
                                  "misspelt symbol parameter", "bad tracer level", "unbounded capture",
                                  "bad queue length"])
def test_bad_server_settings_exit_2_with_one_line_before_loading(tmp_path, case):
    env, args, sock = {}, [], None
    if case == "port in use":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        args = ["--port", str(sock.getsockname()[1])]
        expected = "is already in use; choose another with --port"
    elif case == "bad config":
        (tmp_path / "c.json").write_text('{"enable": "yes"}')
        env = {"SERVICE_PROF_CONFIG_PATH": str(tmp_path / "c.json")}
        expected = "enable='yes' must be 0 or 1"
    elif case == "unwritable capture dir":
        (tmp_path / "file").write_text("")
        env = {"VLLM_TORCH_PROFILER_DIR": str(tmp_path / "file")}
        expected = "exists and is not a directory"
    elif case == "misspelt symbol parameter":  # `prompt` for the runner's `prompts`
        (tmp_path / "s.yaml").write_text("- symbol: tpu_engine.backends.base:Runner.prefill\n  attributes:\n"
                                         "    - name: num_tokens\n      expr: prompt | len\n")
        (tmp_path / "c.json").write_text('{"enable": 0}')
        env = {"SERVICE_PROF_CONFIG_PATH": str(tmp_path / "c.json"), "PROFILING_SYMBOLS_PATH": str(tmp_path / "s.yaml")}
        expected = ("symbol tpu_engine.backends.base:Runner.prefill: attribute 'num_tokens' ('prompt | len') reads "
                    "'prompt', which is not a parameter of Runner.prefill (its parameters: self, slots, prompts, "
                    "sampling, prompt_logprobs).")
    elif case == "bad tracer level":   # accepted at start once, then every /start_profile was a 500
        env = {"VLLM_TORCH_PROFILER_DIR": str(tmp_path / "xla"), "TPU_PROFILER_HOST_TRACER_LEVEL": "9"}
        args, expected = ["--backend", "jax"], "TPU_PROFILER_HOST_TRACER_LEVEL='9' must be a tracer level"
    elif case == "unbounded capture":
        env = {"VLLM_TORCH_PROFILER_DIR": str(tmp_path / "xla"), "VLLM_PROFILER_MAX_ITERS": "0"}
        expected = "VLLM_PROFILER_MAX_ITERS='0' must be a whole number from 1 to 999999999 (a capture is always bounded)"
    elif case == "bad queue length":
        args, expected = ["--max-waiting-queue-length", "0"], "--max-waiting-queue-length 0 must be a positive integer"
    else:
        args = ["--max-model-len", "0"]
        expected = "max_model_len 0 must be a positive integer"
    try:
        proc = _serve(*args, env=env)
    finally:
        if sock:
            sock.close()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
