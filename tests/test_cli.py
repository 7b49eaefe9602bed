"""The command-line entry points, run as a user runs them."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "benchmark_latency.py")
SMALL = ["--input-len", "8", "--output-len", "4", "--batch-size", "2", "--num-iters", "2",
         "--num-iters-warmup", "1", "--max-model-len", "32"]


def run(*args, timeout=600):
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_benchmark_latency_prints_and_writes_figures(tmp_path, llama_dir):
    out = tmp_path / "figures.json"
    proc = run(*SMALL, "--model", llama_dir, "--compare-hf", "--output-json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("Avg latency", "50% percentile latency", "Prefill (whole batch)", "Decode step",
                 "[memory]", "[HF transformers eager]", "[roofline]", "decode tokens/s vs HF"):
        assert line in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["engine"]["decode_tokens_per_s"] > 0
    assert figures["hf"]["decode_tokens_per_s"] > 0
    assert figures["roofline"]["bandwidth_bytes_per_s"] > 0
    assert figures["memory"]["weights_bytes"] > 0


@pytest.mark.parametrize("args, fragment", [
    (["--model", "no-such/model"], "'no-such/model'"),
    (["--input-len", "40"], "max_model_len 32"),
    (["--tensor-parallel-size", "3"], "tensor_parallel_size 3"),
    (["--max-num-seqs", "0"], "max_num_seqs 0"),
])
def test_bad_input_exits_2_with_one_line(args, fragment):
    proc = run(*SMALL, *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0]


def test_bad_flag_value_exits_2():
    proc = run("--input-len", "zero")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--input-len" in proc.stderr
