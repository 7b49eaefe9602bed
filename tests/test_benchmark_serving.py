"""scripts/benchmark_serving.py run for real against a real `python -m tpu_engine.serve`."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from profiling.table import number_ranges
from tests.servers import JAX, SMALL, Server

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmark_serving.py")
ENV = {**os.environ, "PJRT_DEVICE": "CPU"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A served tiny-llama on the JAX backend (max_model_len 64, 4 slots) with XLA captures and the service
    profiler configured (collection off)."""
    tmp = tmp_path_factory.mktemp("served")
    env = {"VLLM_TORCH_PROFILER_DIR": tmp / "xla", "SERVICE_PROF_CONFIG_PATH": tmp / "sp.json"}
    with Server([*SMALL, *JAX], env=env) as srv:
        srv.tmp = tmp
        yield srv


@pytest.fixture(scope="module")
def server(served):
    return served.url


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


def test_service_profiler_ab_mode(served, tmp_path):
    """The A/B mode flips the server's own config: spans are recorded in the "on" round only."""
    cfg = served.tmp / "sp.json"
    before = json.loads(cfg.read_text())
    out = tmp_path / "ab.json"
    r = bench("--base-url", served.url, "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2",
              "--service-profiler-config", str(cfg), "--toggle-rounds", "1", "--result-json", str(out))
    assert r.returncode == 0, r.stderr
    assert "on/off" in r.stdout
    assert json.loads(cfg.read_text()) == before  # enable back to 0, other fields kept
    res = json.loads(out.read_text())
    assert [x["enable"] for x in res["rounds"]] == [0, 1]
    assert all(x["completed"] == 2 for x in res["rounds"])
    assert not [p for p in os.listdir(served.tmp) if p.endswith(".tmp") or p.startswith(".")]
    events = glob.glob(str(served.tmp / "service_profile" / "*" / "events.jsonl"))
    with open(events[0]) as f:
        spans = [e for e in map(json.loads, f) if e["type"] == "span"]
    arrivals = [e for e in spans if e["name"] == "arrive"]
    assert len(arrivals) == 2  # the "on" round's two requests; the warm-up and "off" rounds none


def test_step_numbers_read_as_ranges():
    assert number_ranges([12, 3, 1, 2, 7, 9, 10]) == "1-3, 7, 9-10, 12"
    assert number_ranges([5]) == "5" and number_ranges([]) == ""


def test_profile_flag(served):
    r = bench("--base-url", served.url, "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "2",
              "--profile")
    assert r.returncode == 0, r.stderr
    runs = glob.glob(str(served.tmp / "xla" / "plugins" / "profile" / "*_serve-prefill-decode"))
    assert len(runs) == 1
    with open(os.path.join(runs[0], "manifest.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    # Both requests' prefills: one step each, or one packed step when both arrived before it ran.
    prefilled = [i for r in rows if r["phase"] == "prefill" for i in r["request_ids"]]
    assert len(prefilled) == len(set(prefilled)) == 2, rows
    # The steps are summed up as ranges in two lines, not printed one number per line.
    lines = r.stdout.splitlines()
    at = lines.index(f"profile: {os.path.relpath(runs[0], served.tmp / 'xla')}")   # as the server names it
    ranges = ", ".join(f"{phase} {number_ranges(sorted(x['step'] for x in rows if x['phase'] == phase))}"
                       for phase in ("prefill", "decode"))
    assert re.fullmatch(rf"  captured {len(rows)} steps in \d+\.\d\d s: {ranges}", lines[at + 1]), lines[at:]
    assert not [line for line in lines if line.strip().rstrip(",").isdigit()], r.stdout


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
