"""`scripts/profiling.py` on bad input, `python -m profiling doctor`, and the `tpu-profiling`
console script, run as a user runs them (subprocesses).

Every bad input is caught before the engine loads: exit code 2, one `error:` line, no
traceback, and nothing published or left staged under the profile dir.
"""
from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.captures import PROFILING, ROOT, SMALL, free_port, profiling_env, run_profiling

pytestmark = pytest.mark.slow

# Well-formed for the small model: batch 2 x 8 tokens, 4 output tokens, within SMALL's limits.
GOOD = ["--input-len", "8", "--output-len", "4", "--batch-size", "2"]


def _held_port():
    """A socket listening on a free port, as another server would hold it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("", 0))
    s.listen(1)
    return s


def _leftovers(profile_dir: str) -> list[str]:
    return (glob.glob(os.path.join(profile_dir, "plugins", "profile", "*"))
            + glob.glob(os.path.join(profile_dir, ".staging-*")))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def _assert_clean_failure(proc, profile_dir: str, *fragments: str, usage: bool = False) -> str:
    out = f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stderr + proc.stdout, out
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, out
    if usage:  # argparse: `usage: ...` then `profiling.py: error: ...`
        assert proc.stderr.lstrip().startswith("usage:"), out
        assert errors[0].startswith("profiling.py: error:"), out
    else:      # tpu_engine.cli.run_cli: the whole of stderr is the one line
        assert errors[0].startswith("error: "), out
        assert proc.stderr.strip() == errors[0], out
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert _leftovers(profile_dir) == [], out
    assert "Warming up" not in proc.stdout, out  # failed before the engine ran
    return errors[0]


def _run(tmp_path, model: str, *args, env=None, profile_dir=None, port=None):
    profile_dir = profile_dir or str(tmp_path / "profiles")
    proc = run_profiling("--model", model, *SMALL, "--profile-result-dir", profile_dir,
                         "--profiler-port", str(port or free_port()), *args,
                         env=env or profiling_env(), timeout=120)
    return proc, profile_dir


# ---- the env capture window --------------------------------------------------------------
@pytest.mark.parametrize("name, value, fragment", [
    ("VLLM_TPU_PROFILE_DELAY_MS", "abc", "VLLM_TPU_PROFILE_DELAY_MS='abc' is not an integer"),
    ("VLLM_TPU_PROFILE_DELAY_MS", "-5", "VLLM_TPU_PROFILE_DELAY_MS=-5 must be at least 0"),
    ("VLLM_TPU_PROFILE_DURATION_MS", "0", "VLLM_TPU_PROFILE_DURATION_MS=0 must be at least 1"),
])
def test_bad_env_window_exits_2(tmp_path, llama_dir, name, value, fragment):
    proc, profile_dir = _run(tmp_path, llama_dir, *GOOD, env=profiling_env(**{name: value}))
    _assert_clean_failure(proc, profile_dir, fragment)


# ---- the machine: port and profile dir ---------------------------------------------------
def test_profiler_port_in_use_exits_2(tmp_path, llama_dir):
    """Only when XLA's profiler server is asked for: by default none starts."""
    with _held_port() as held:
        port = held.getsockname()[1]
        proc, profile_dir = _run(tmp_path, llama_dir, *GOOD, "--profiler-host", "0.0.0.0", port=port)
    _assert_clean_failure(proc, profile_dir, f"profiler port {port} is already in use", "--profiler-port")


def test_a_profiler_host_xla_cannot_bind_exits_2(tmp_path, llama_dir):
    proc, profile_dir = _run(tmp_path, llama_dir, *GOOD, "--profiler-host", "10.0.0.1")
    _assert_clean_failure(proc, profile_dir, "--profiler-host '10.0.0.1' cannot be honoured: XLA's profiler "
                                             "server listens on all interfaces or not at all", usage=True)


def test_unwritable_profile_dir_exits_2(tmp_path, llama_dir):
    # Tests run as root, where permission bits do not stop writes: a path under a regular
    # file cannot be created by anyone.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file\n")
    profile_dir = str(blocker / "profiles")
    proc, _ = _run(tmp_path, llama_dir, *GOOD, profile_dir=profile_dir)
    _assert_clean_failure(proc, profile_dir, f"profile dir {profile_dir!r} cannot be created (Not a directory)")
    assert blocker.read_text() == "a file\n"
    assert sorted(os.listdir(tmp_path)) == ["not-a-dir"]


def test_profile_dir_that_is_a_file_exits_2(tmp_path, llama_dir):
    blocker = tmp_path / "profiles"
    blocker.write_text("a file\n")
    proc, profile_dir = _run(tmp_path, llama_dir, *GOOD, profile_dir=str(blocker))
    _assert_clean_failure(proc, profile_dir, "exists and is not a directory")
    assert blocker.read_text() == "a file\n"


# ---- the batch against the engine's limits -----------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["--input-len", "40", "--output-len", "30", "--batch-size", "1"],
     ["input length 40 + output length 30", "max_model_len 64"]),
    # Over both limits: the overall one is named (a 4000-token input once blamed the batch limit).
    (["--input-len", "100", "--output-len", "1", "--batch-size", "1", "--max-num-batched-tokens", "32"],
     ["input length 100 + output length 1", "max_model_len 64", "--max-model-len"]),
    (["--input-len", "20", "--output-len", "4", "--batch-size", "1", "--max-num-batched-tokens", "16"],
     ["input length 20", "max_num_batched_tokens 16", "--max-num-batched-tokens"]),
], ids=["over-max-model-len", "over-both", "over-max-num-batched-tokens"])
def test_batch_over_engine_limits_exits_2(tmp_path, llama_dir, args, fragments):
    proc, profile_dir = _run(tmp_path, llama_dir, *args)
    _assert_clean_failure(proc, profile_dir, *fragments)


def test_unknown_model_exits_2(tmp_path):
    proc, profile_dir = _run(tmp_path, "no-such-org/no-such-model", *GOOD)
    _assert_clean_failure(proc, profile_dir, "'no-such-org/no-such-model'", "not a known id")


# ---- argparse-level errors ---------------------------------------------------------------
def test_run_to_completion_n_zero_exits_2(tmp_path, llama_dir):
    proc, profile_dir = _run(tmp_path, llama_dir, *GOOD, "run_to_completion", "-n", "0")
    _assert_clean_failure(proc, profile_dir, "run_to_completion -n 0 must be at least 1", usage=True)


def test_bad_flag_type_exits_2(tmp_path, llama_dir):
    proc, profile_dir = _run(tmp_path, llama_dir, "--input-len", "zero")
    _assert_clean_failure(proc, profile_dir, "--input-len", "invalid int value: 'zero'", usage=True)


# ---- python -m profiling doctor ------------------------------------------------------------
DOCTOR_LINE = re.compile(r"^(ok|FAIL)\s+(versions|profile plugin|server plugin|port|profile dir)\s+(\S.*)$")


def _doctor(profile_dir: str, port: int):
    proc = subprocess.run([sys.executable, "-m", "profiling", "doctor", "--profile-result-dir", profile_dir,
                           "--profiler-port", str(port)], capture_output=True, text=True,
                          env=profiling_env(), timeout=120, cwd=ROOT)
    checks = {}
    for line in proc.stdout.splitlines():
        m = DOCTOR_LINE.match(line)
        if m:
            checks[m.group(2)] = (m.group(1), m.group(3))
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, out
    assert set(checks) == {"versions", "profile plugin", "server plugin", "port", "profile dir"}, out
    return proc, checks, out


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "not-yet-created"])
def test_doctor_all_ok_on_a_fresh_dir(tmp_path, exists):
    profile_dir = tmp_path / "profiles"
    if exists:
        profile_dir.mkdir()
    port = free_port()
    proc, checks, out = _doctor(str(profile_dir), port)
    assert proc.returncode == 0, out
    assert all(status == "ok" for status, _ in checks.values()), out
    assert str(port) in checks["port"][1], out
    assert str(profile_dir) in checks["profile dir"][1], out
    assert profile_dir.exists() == exists  # the doctor only looks


def test_doctor_fails_on_a_held_port(tmp_path):
    (tmp_path / "profiles").mkdir()
    with _held_port() as held:
        port = held.getsockname()[1]
        proc, checks, out = _doctor(str(tmp_path / "profiles"), port)
    assert proc.returncode == 1, out
    status, msg = checks["port"]
    assert status == "FAIL" and str(port) in msg, out
    assert all(checks[name][0] == "ok" for name in ("versions", "profile plugin", "profile dir")), out


@pytest.mark.parametrize("port", [0, 70000])
def test_doctor_fails_on_an_invalid_port(tmp_path, port):
    proc, checks, out = _doctor(str(tmp_path / "profiles"), port)
    assert proc.returncode == 1 and "Traceback" not in out, out
    status, msg = checks["port"]
    assert status == "FAIL" and "1-65535" in msg, out


def test_doctor_agrees_with_profiling_on_the_profile_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc, checks, out = _doctor(str(blocker / "profiles"), free_port())
    assert proc.returncode == 1 and checks["profile dir"][0] == "FAIL", out
    # A missing chain of parents is fine: profiling.py creates the whole path.
    proc, checks, out = _doctor(str(tmp_path / "new" / "deeper" / "profiles"), free_port())
    assert checks["profile dir"][0] == "ok", out


def test_doctor_fails_on_a_stray_xplane(tmp_path):
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    stray = profile_dir / "x.xplane.pb"
    stray.write_bytes(b"")
    proc, checks, out = _doctor(str(profile_dir), free_port())
    assert proc.returncode == 1, out
    status, msg = checks["profile dir"]
    assert status == "FAIL" and str(stray) in msg, out
    assert "plugins/profile" in msg, out
    assert all(checks[name][0] == "ok" for name in ("versions", "profile plugin", "port")), out


# ---- the entry points ----------------------------------------------------------------------
def test_capture_entry_points_share_one_parser():
    """`tpu-profiling`, `python -m profiling capture` and the seed's `scripts/profiling.py` are
    one command: the same flags, each with the same help."""
    script = os.path.join(os.path.dirname(sys.executable), "tpu-profiling")
    assert os.access(script, os.X_OK), f"{script} missing: pip install -e . installs it"
    helps = {}
    for name, cmd in (("console", [script]), ("module", [sys.executable, "-m", "profiling", "capture"]),
                      ("script", [sys.executable, PROFILING])):
        proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=profiling_env(),
                              timeout=120, cwd=ROOT)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        options = proc.stdout.split("options:", 1)[1]  # what follows the usage line (which names the program)
        helps[name] = re.sub(r"\s+", " ", options)
    for text in ("--profile-phase", "run_num_steps", "run_to_completion", "--profiler-port",
                 "--profile-result-dir", "--enforce-eager"):
        assert text in helps["console"], f"{text!r} not in:\n{helps['console']}"
    assert helps["console"] == helps["module"] == helps["script"]


def test_script_outside_an_install_says_how_to_install(tmp_path):
    """The scripts hold no code: run with a Python that lacks the package, they say so in one line."""
    env = {**{k: v for k, v in profiling_env().items() if k != "PYTHONPATH"}, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-S", PROFILING, "--help"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: profiling is not installed; install the project first: pip install -e ."], proc.stderr
