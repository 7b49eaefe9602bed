"""scripts/benchmark_serving.py run for real against a real `python -m tpu_engine.serve`."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark_serving.py")
# The server without the profiling plugin's capture dir or service profiler config from the caller.
ENV = {k: v for k, v in os.environ.items() if k not in ("VLLM_TORCH_PROFILER_DIR", "SERVICE_PROF_CONFIG_PATH")}
ENV["PJRT_DEVICE"] = "CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a served tiny-llama (max_model_len 64, 4 slots)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tpu_engine.serve", "--max-model-len", "64",
                                 "--max-num-seqs", "4", "--port", str(port)],
                                cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not healthy after 240 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.kill()
        proc.wait()


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--disable-tqdm", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, fragment: str = "") -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert fragment in lines[0], lines[0]


def test_run(server, tmp_path):
    out = tmp_path / "x.json"
    r = bench("--base-url", server, "--num-prompts", "12", "--random-input-len", "8", "--random-output-len", "6",
              "--random-range-ratio", "0.5", "--max-concurrency", "4", "--result-json", str(out))
    assert r.returncode == 0, r.stderr
    for label in ("TTFT", "TPOT", "ITL", "E2E", "p50", "p90", "p99", "req/s", "output tok/s"):
        assert label in r.stdout, r.stdout
    res = json.loads(out.read_text())
    assert (res["completed"], res["failed"]) == (12, 0)
    reqs = res["requests"]
    assert len(reqs) == 12 and all(q["success"] for q in reqs)
    for q in reqs:
        assert q["output_tokens"] == q["output_len"] == q["usage_completion_tokens"]
        assert 3 <= q["output_len"] <= 9 and 4 <= q["prompt_len"] <= 12  # 6 and 8, +-50%
        assert len(q["itl_s"]) == q["output_tokens"] - 1
    assert len({q["output_len"] for q in reqs}) > 1  # the range ratio spreads the lengths
    total_out = sum(q["output_len"] for q in reqs)
    assert res["total_output_tokens"] == total_out
    assert res["output_throughput"] == pytest.approx(total_out / res["duration_s"], rel=1e-9)
    assert res["request_throughput"] == pytest.approx(12 / res["duration_s"], rel=1e-9)
    for m in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < res[f"p50_{m}_ms"] <= res[f"p90_{m}_ms"] <= res[f"p99_{m}_ms"]
    for q in reqs:
        assert 0 < q["ttft_s"] <= q["e2el_s"]


def test_service_profiler_ab_mode(server, tmp_path):
    cfg = tmp_path / "sp.json"
    cfg.write_text(json.dumps({"enable": 1, "logdir": "/somewhere"}))
    out = tmp_path / "ab.json"
    r = bench("--base-url", server, "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2",
              "--service-profiler-config", str(cfg), "--toggle-rounds", "1", "--result-json", str(out))
    assert r.returncode == 0, r.stderr
    assert "on/off" in r.stdout
    assert json.loads(cfg.read_text()) == {"enable": 0, "logdir": "/somewhere"}
    res = json.loads(out.read_text())
    assert [x["enable"] for x in res["rounds"]] == [0, 1]
    assert all(x["completed"] == 2 for x in res["rounds"])
    assert sorted(os.listdir(tmp_path)) == ["ab.json", "sp.json"]  # no temp file left behind


def test_profile_flag(server):
    """/start_profile may be unconfigured on this server: then a plain one-line failure, exit 1."""
    r = bench("--base-url", server, "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2",
              "--profile")
    if r.returncode == 0:
        assert "profile:" in r.stdout
    else:
        assert_one_line_error(r, 1, "POST /start_profile failed")


@pytest.mark.parametrize("args, fragment", [
    (["--num-prompts", "0"], "--num-prompts"),
    (["--request-rate", "-1"], "--request-rate"),
    (["--num-prompts", "x"], "--num-prompts"),
    (["--base-url", "http://127.0.0.1:1"], "cannot reach"),
    (["--toggle-rounds", "1", "--service-profiler-config", "/nonexistent/sp.json"], "does not exist"),
    (["--toggle-rounds", "1", "--service-profiler-config", __file__], "not readable JSON"),
])
def test_bad_input(args, fragment):
    assert_one_line_error(bench("--base-url", "http://127.0.0.1:1", *args), 2, fragment)


def test_workload_too_long_for_server(server):
    assert_one_line_error(bench("--base-url", server, "--random-input-len", "60"), 2, "max_model_len is 64")
