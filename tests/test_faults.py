"""Faults during a capture, made with real signals on real `scripts/profiling.py` runs (the
tiniest shapes: one 4-token prompt, one output token, a 16-token model length).

Ctrl-C at each stage (warm-up, pass, export, verification, publish: the last two in one run,
the second Ctrl-C discarding its capture) must leave a readable, verified profile or none, and
say truthfully which; a run killed with SIGKILL leaves a staging dir that the next run (or
`doctor`) recovers (a verified capture) or removes (anything else), saying which.
The runs stop at a stage with PROFILING_PAUSE_AT (they print one line and wait for a signal),
except the warm-up one, interrupted while its engine compiles. Every run starts at once, so
their start-up overlaps; each test then drives its own.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from profiling.capture.verify import check_capture
from tests.captures import PROFILING, ROOT, free_port, profiling_env
from tests.servers import PROFILER_ENV

pytestmark = pytest.mark.slow

TINY = ["--input-len", "4", "--output-len", "1", "--max-model-len", "16", "--batch-size", "1",
        "--num-iters-warmup", "0", "--profile-phase", "all", "--enforce-eager"]
STAGE_TIMEOUT_S = 300


class Run:
    """A `profiling.py` subprocess whose output (stdout and stderr together) a thread collects,
    so that a test can wait for a line."""

    def __init__(self, profile_dir: str, model: str, pause_at: str | None, flags=(), **env):
        env = profiling_env(PYTHONUNBUFFERED=1, **env, **({"PROFILING_PAUSE_AT": pause_at} if pause_at else {}))
        self.profile_dir = profile_dir
        self.proc = subprocess.Popen(
            [sys.executable, PROFILING, "--model", model, *TINY, "--profile-result-dir", profile_dir,
             "--profiler-port", str(free_port()), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # end of output
            self._changed.notify_all()

    @property
    def out(self) -> str:
        return "".join(line for line in self.lines if line)

    def wait_for(self, text: str) -> None:
        """Block until a line holding `text` is printed; fail (with the output) if the run ends first."""
        def seen() -> bool:
            return any(line is not None and text in line for line in self.lines)
        with self._changed:
            self._changed.wait_for(lambda: seen() or None in self.lines, STAGE_TIMEOUT_S)
            assert seen(), f"{text!r} never came:\n{self.out[-3000:]}"

    def signal_at(self, text: str, sig=signal.SIGINT) -> int:
        """Send `sig` once `text` is printed; the exit status."""
        self.wait_for(text)
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=STAGE_TIMEOUT_S)

    def runs(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.profile_dir, "plugins", "profile", "*")))

    def staging(self) -> list[str]:
        return glob.glob(os.path.join(self.profile_dir, ".staging-*"))


@pytest.fixture(scope="module")
def started(tmp_path_factory, llama_dir):
    """One run per case, all started now; a test that never signals its run has it killed."""
    cases = {"warmup": None, "pass": "pass", "export": "export", "killed": "publish", "killed_early": "export"}
    runs = {name: Run(str(tmp_path_factory.mktemp(name)), llama_dir, pause) for name, pause in cases.items()}
    runs["env"] = Run(str(tmp_path_factory.mktemp("env")), llama_dir, "pass", VLLM_TPU_PROFILE_DURATION_MS=2000)
    runs["removed"] = Run(str(tmp_path_factory.mktemp("removed") / "profiles"), llama_dir, "publish",
                          flags=["--backend", "jax"])
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()


def _paused(stage: str) -> str:
    return f"paused at {stage} (PROFILING_PAUSE_AT)"


def _record(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "run_info.json")) as f:
        return json.load(f)


def _one_verified_run(run: Run) -> tuple[str, dict]:
    """The run's one published capture, read back and verified now; and its run record."""
    assert len(run.runs()) == 1 and not run.staging(), run.out[-3000:]
    check_capture(run.runs()[0])  # raises if XProf cannot read it
    return run.runs()[0], _record(run.runs()[0])


def _clean_exit(run: Run, code: int) -> None:
    assert code == 130, run.out[-3000:]
    assert "Traceback" not in run.out, run.out[-3000:]
    assert "finishing the capture made so far" not in run.out


def test_ctrl_c_during_warm_up_saves_nothing_and_says_so(started):
    run = started["warmup"]
    _clean_exit(run, run.signal_at("Compiling 1/"))  # inside the engine's warm-up compilation
    assert "interrupted before the profiled passes: nothing was captured." in run.out
    assert run.runs() == [] and run.staging() == []


def test_ctrl_c_in_a_pass_keeps_what_it_captured_recorded_as_interrupted(started):
    run = started["pass"]
    _clean_exit(run, run.signal_at(_paused("pass")))
    assert "interrupted: the profiled passes stop here; saving pass 1's capture so far" in run.out
    path, info = _one_verified_run(run)
    assert info["interrupted"] is True
    found = sorted(n for v in info["verification"]["steps"].values() for n in v)
    assert found and info["capture"]["window_steps"] == found   # the steps it ran are the steps it holds
    assert f"interrupted: the capture holds steps {found[0]}" in run.out
    assert f"Capture: {os.path.relpath(path, ROOT)}" in run.out and "interrupted: 1 verified capture(s) kept." in run.out


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


def test_ctrl_c_in_an_env_window_pass_still_collects_its_trace(started):
    """Also: no profiler server listens (XLA's binds every interface, so it starts only with
    --profiler-host 0.0.0.0); the env window is traced in process."""
    run = started["env"]
    run.wait_for(_paused("pass"))
    port = int(run.proc.args[run.proc.args.index("--profiler-port") + 1])
    assert not _listening(port), f"something listens on the profiler port {port}"
    _clean_exit(run, run.signal_at(_paused("pass")))
    assert "interrupted: the profiled passes stop here; saving the env window's capture" in run.out
    _, info = _one_verified_run(run)
    assert info["interrupted"] is True and info["window"]["kind"] == "env" and info["verification"]["steps"]
    assert "interrupted: 1 verified capture(s) kept." in run.out


def test_a_profile_dir_removed_before_publish_then_ctrl_c_is_one_sentence(started):
    """JAX backend: the profile dir deleted while the run waits to publish, then Ctrl-C: the
    capture is discarded in one sentence (a FileNotFoundError traceback before) and nothing is
    made again in its place."""
    run = started["removed"]
    run.wait_for(_paused("publish"))
    shutil.rmtree(run.profile_dir)
    _clean_exit(run, run.signal_at(_paused("publish")))
    assert f"warning: the capture was discarded: it could not be written into {run.profile_dir} (the profile " \
           f"dir or its staging was removed)." in run.out
    assert "interrupted: no capture was saved." in run.out and not os.path.exists(run.profile_dir)


def test_ctrl_c_after_export_keeps_the_complete_capture(started):
    # The capture had reached staging: it used to be discarded after "finishing the capture".
    run = started["export"]
    _clean_exit(run, run.signal_at(_paused("export")))
    assert "interrupted: finishing pass 1's capture first, then stopping" in run.out
    _, info = _one_verified_run(run)
    assert info["interrupted"] is False                          # the pass itself ran whole
    assert info["capture"]["window_steps"] == sorted(n for v in info["verification"]["steps"].values() for n in v)
    assert "interrupted: 1 verified capture(s) kept." in run.out


def test_sigkill_then_the_next_run_recovers_the_verified_capture(started, llama_dir):
    killed = started["killed"]
    assert killed.signal_at(_paused("publish"), signal.SIGKILL) == -signal.SIGKILL
    assert killed.runs() == [] and len(killed.staging()) == 1   # verified and recorded, not yet moved
    # The next run into the same dir recovers it. That run gets Ctrl-C during its own
    # verification (it carries on) and again before its rename (its capture is discarded).
    second = Run(killed.profile_dir, llama_dir, "verify,publish")
    second.wait_for("stale staging")
    assert f"(left by process {killed.proc.pid}, which is gone): its verified capture recovered as" in second.out
    second.wait_for(_paused("verify"))
    second.proc.send_signal(signal.SIGINT)
    second.wait_for("interrupted: finishing pass 1's capture first, then stopping (Ctrl-C again to discard it)")
    _clean_exit(second, second.signal_at(_paused("publish")))
    assert "interrupted again: the unfinished capture was discarded." in second.out
    assert "interrupted: no capture was saved." in second.out
    recovered, info = _one_verified_run(second)                  # the killed run's, and nothing else
    assert os.path.relpath(recovered, ROOT) in second.out
    assert info["command"][-1] == killed.proc.args[-1] and info["verification"]["steps"]


def test_sigkill_before_verification_leaves_staging_that_doctor_removes(started):
    killed = started["killed_early"]
    assert killed.signal_at(_paused("export"), signal.SIGKILL) == -signal.SIGKILL
    assert len(killed.staging()) == 1 and killed.runs() == []
    doctor = subprocess.run([sys.executable, "-m", "profiling", "doctor", "--profile-result-dir", killed.profile_dir,
                             "--profiler-port", str(free_port())], check=False, capture_output=True, text=True, cwd=ROOT,
                            env=profiling_env(), timeout=300)
    line = next(line for line in doctor.stdout.splitlines() if " staging " in line)
    assert f"(left by process {killed.proc.pid}, which is gone): 1 unfinished capture(s) (never verified) deleted" \
        in line, doctor.stdout
    assert killed.staging() == [] and killed.runs() == []


def test_a_server_plugin_path_that_cannot_be_written_stops_the_server_before_the_model_loads(tmp_path, llama_dir):
    """Every path the profiling plugin will write is checked first: exit 2, one sentence naming it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"enable": 0, "output_dir": "a-file/out"}))   # relative to the config
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"enable": 0}))
    cases = [({"SERVICE_PROF_CONFIG_PATH": config}, f"the service profiler's output_dir (set in {config}) '{blocker}/out'"),
             ({"SERVICE_PROF_CONFIG_PATH": good, "PROFILING_SYMBOLS_PATH": blocker / "symbols.yaml"},
              f"the directory of PROFILING_SYMBOLS_PATH '{blocker}'")]
    for env, named in cases:
        inherited = {k: v for k, v in os.environ.items() if k not in PROFILER_ENV}
        proc = subprocess.run([sys.executable, "-m", "tpu_engine.serve", "--model", llama_dir, "--max-model-len", "16",
                               "--port", str(free_port())], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**inherited, "PJRT_DEVICE": "CPU", **{k: str(v) for k, v in env.items()}})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-3000:]
        assert proc.stderr.strip() == f"error: {named} cannot be created: '{blocker}' is not a directory.", out[-3000:]
        assert "Compiling" not in out and "Traceback" not in out   # before the model loaded
