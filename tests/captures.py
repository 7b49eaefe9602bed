"""Run `scripts/profiling.py` as a user does (a subprocess) on the small test model."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILING = os.path.join(ROOT, "scripts", "profiling.py")
# Small shapes: few buckets, so the engine warms up in seconds.
SMALL = ["--max-model-len", "64", "--max-num-seqs", "4", "--num-iters-warmup", "1"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def profiling_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_TPU_PROFILE_")}
    env.update(PJRT_DEVICE="CPU", **{k: str(v) for k, v in extra.items()})
    return env


def run_profiling(*args, env=None, timeout=600, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, PROFILING, *args], capture_output=True, text=True,
                          env=env or profiling_env(), timeout=timeout, cwd=cwd)


def profiling_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m profiling ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "profiling", *args], capture_output=True, text=True,
                          env=profiling_env(), cwd=ROOT, timeout=timeout)


def proc_output(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


class Capture:
    """One finished `profiling.py` run: its output and the run directories it published."""

    def __init__(self, proc: subprocess.CompletedProcess, profile_dir: str):
        self.proc, self.profile_dir = proc, profile_dir
        self.runs = sorted(glob.glob(os.path.join(profile_dir, "plugins", "profile", "*")))

    @property
    def run(self) -> str:
        assert len(self.runs) == 1, self.runs
        return self.runs[0]

    def manifest(self, run=None) -> list[dict]:
        with open(os.path.join(run or self.run, "manifest.jsonl")) as f:
            return [json.loads(line) for line in f]

    def run_info(self, run=None) -> dict:
        with open(os.path.join(run or self.run, "run_info.json")) as f:
            return json.load(f)

    def xplane(self, run=None) -> str:
        return glob.glob(os.path.join(run or self.run, "*.xplane.pb"))[0]


def capture(profile_dir: str, model_dir: str, *args, env=None) -> Capture:
    proc = run_profiling("--model", model_dir, *SMALL, "--profile-result-dir", profile_dir,
                         "--profiler-port", str(free_port()), *args, env=env)
    return Capture(proc, profile_dir)
