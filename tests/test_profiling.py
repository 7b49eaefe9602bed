"""Captures made by scripts/profiling.py: windows exact by construction, the env window's delay
and duration, the manifest and run record, verification, XLA_HLO_DEBUG metadata, Ctrl-C."""
import glob
import json
import os
import signal
import subprocess
import sys

from profiling.capture import workload
from profiling.capture.record import read_manifest, read_run_record
from profiling.capture.verify import check_capture
from profiling.trace import xspace
from tests.captures import PROFILING, ROOT, SMALL, free_port, profiling_env


def _phases(cap):
    return [s.phase for s in xspace.step_scopes(xspace.load(cap.xplane()))]


def test_prefill_capture_holds_prefill_and_no_decode(prefill_capture):
    cap = prefill_capture
    assert cap.proc.returncode == 0, cap.proc.stderr[-3000:]
    assert os.path.basename(cap.run).startswith("prefill_")
    phases = _phases(cap)
    assert phases == ["prefill", "prefill"]  # batch of 2: one prefill step each, nothing else
    rows = cap.manifest()
    assert [r["phase"] for r in rows] == ["prefill", "prefill"]
    assert all(r["num_tokens"] == 20 and r["padded_tokens"] == 32 for r in rows)
    assert "Capture:" in cap.proc.stdout and "tensorboard --logdir" in cap.proc.stdout


def test_decode_capture_holds_decode_steps_and_no_prefill(decode_capture):
    cap = decode_capture
    assert cap.proc.returncode == 0, cap.proc.stderr[-3000:]
    assert os.path.basename(cap.run).startswith("decode_")
    phases = _phases(cap)
    assert len(phases) >= 1 and set(phases) == {"decode"}


def test_run_to_completion_shrinks_the_batch(decode_capture):
    rows = decode_capture.manifest()
    # 4 requests, one finishing per decode step: the seed's schedule.
    assert [r["batch_size"] for r in rows] == [4, 3, 2, 1]
    assert [r["batch_size"] for r in rows] == workload.decode_batch_sizes(
        workload.steps_per_request("run_to_completion", 4, 0, 1))
    steps = [r["step"] for r in rows]
    assert steps == list(range(steps[0], steps[0] + len(steps)))
    for r in rows:
        assert r["wall_start"] <= r["wall_end"] and r["compiles"] == 0
        assert r["kv_len_min"] <= r["kv_len_max"] <= r["kv_bucket"]
    # The manifest's steps are exactly the step scopes in the trace.
    scopes = xspace.step_scopes(xspace.load(decode_capture.xplane()))
    assert [s.step for s in scopes] == steps


def test_schedules_match_the_seed():
    assert workload.decode_batch_sizes(workload.steps_per_request("run_to_completion", 128, 0, 32)) == \
        [128, 96, 64, 32, 1]
    assert workload.decode_batch_sizes(workload.steps_per_request("run_num_steps", 8, 0, 5)) == [8] * 4
    assert workload.steps_per_request("generate", 3, 7, None) == [7, 7, 7]


def test_run_info_records_the_run(decode_capture):
    info = decode_capture.run_info()
    assert info["versions"]["torch"] == "2.9.0" and info["versions"]["torch_xla"] == "2.9.0"
    assert info["engine"]["device"]["platform"] == "CPU" and info["engine"]["device"]["device_count"] >= 1
    assert info["args"]["batch_size"] == 4 and info["args"]["mode"] == "run_to_completion"
    assert info["window"]["kind"] == "phase" and info["window"]["phase"] == "decode"
    assert len(info["latency_s"]["profiled"]) == 1 and info["latency_s"]["warmup_mean"] > 0
    assert info["compiles"]["warmup"]["compiles"] > 0
    assert info["compiles"]["profiled"]["compiles"] == 0
    assert info["verification"]["steps"] == {"decode": [r["step"] for r in decode_capture.manifest()]}
    assert info["verification"]["bytes"] == os.path.getsize(decode_capture.xplane())
    assert info["capture"]["window_steps"] == info["verification"]["steps"]["decode"]
    assert 0 <= info["capture"]["written_after_s"] < 60


def test_run_files_read_back_as_typed_records(decode_capture):
    """run_info.json and manifest.jsonl round-trip through their record types unchanged."""
    record = read_run_record(decode_capture.run)
    assert json.loads(json.dumps(record.to_json())) == decode_capture.run_info()
    assert record.model_config.num_hidden_layers == decode_capture.run_info()["model_config"]["num_hidden_layers"]
    assert record.engine.device.platform == "CPU" and record.compiles.profiled.compiles == 0
    steps = read_manifest(decode_capture.run)
    assert [s.to_json() for s in steps] == decode_capture.manifest()
    assert [s.batch_size for s in steps] == [4, 3, 2, 1]


def test_env_window_honours_delay_and_duration(env_capture):
    cap = env_capture
    assert cap.proc.returncode == 0, cap.proc.stderr[-3000:]
    info = cap.run_info()
    delay, duration = 0.7, 1.5
    start_ns, stop_ns = info["verification"]["session_ns"]
    requested = info["capture"]["requested_at"]
    # The trace began no earlier than the delay after it was requested ...
    assert start_ns / 1e9 >= requested + delay - 0.05
    # ... and spans about the duration.
    assert abs((stop_ns - start_ns) / 1e9 - duration) < 0.5
    scopes = xspace.step_scopes(xspace.load(cap.xplane()))
    assert scopes, "the window should hold engine steps"
    assert scopes[0].start_ns >= start_ns
    # Every captured step is in the manifest, and it started after the delay.
    rows = {r["step"]: r for r in cap.manifest()}
    assert sorted(rows) == sorted(s.step for s in scopes)
    assert min(r["wall_start"] for r in rows.values()) >= requested + delay - 0.05


def test_verification_reads_the_capture(decode_capture):
    check = check_capture(decode_capture.run)
    assert check.bytes > 0 and any(t.startswith("trace_viewer") for t in check.xprof_tools)
    assert check.steps["decode"] == [r["step"] for r in decode_capture.manifest()]


def test_hlo_debug_puts_module_names_in_the_hlo_metadata(prefill_capture, decode_capture):
    # Both runs trace lazily (--enforce-eager); only the prefill run set XLA_HLO_DEBUG=1.
    with_debug = [m for _, m in xspace.hlo_modules(xspace.load(prefill_capture.xplane()))]
    without = [m for _, m in xspace.hlo_modules(xspace.load(decode_capture.xplane()))]
    assert with_debug and without
    assert any(b"model.layers.1.self_attn" in m for m in with_debug)
    assert not any(b"model.layers." in m for m in without)


def test_late_window_is_reported(tmp_path, llama_dir):
    # The passes finish long before a 4 s delay: the run must say so rather than exit quietly.
    proc = subprocess.run(
        [sys.executable, PROFILING, "--model", llama_dir, *SMALL, "--input-len", "8", "--output-len", "2",
         "--batch-size", "1", "--profile-result-dir", str(tmp_path), "--profiler-port", str(free_port())],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=profiling_env(VLLM_TPU_PROFILE_DELAY_MS=4000, VLLM_TPU_PROFILE_DURATION_MS=200))
    assert proc.returncode == 1
    assert "profiling is late" in proc.stderr
    # An idle window yields either no file at all or a capture without steps; both are said.
    assert "holds no engine step" in proc.stderr or "no capture arrived" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_during_profiled_passes_leaves_a_readable_capture_or_none(tmp_path, llama_dir):
    proc = subprocess.Popen(
        [sys.executable, PROFILING, "--model", llama_dir, *SMALL, "--input-len", "8", "--output-len", "40",
         "--batch-size", "4", "--num-iters", "400", "--profile-phase", "decode",
         "--profile-result-dir", str(tmp_path), "--profiler-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=profiling_env())
    seen = []
    for line in proc.stdout:  # wait until the first profiled pass is published; later ones run on
        seen.append(line)
        if line.startswith("Capture: "):
            break
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.stdout.read()
    assert proc.wait(timeout=120) == 130, out[-3000:]
    assert "Traceback" not in out
    assert not glob.glob(os.path.join(str(tmp_path), ".staging-*"))
    runs = glob.glob(os.path.join(str(tmp_path), "plugins", "profile", "*"))
    assert runs, out[-3000:]
    for run in runs:
        check = check_capture(run)  # raises if unreadable
        assert set(check.steps) == {"decode"}
