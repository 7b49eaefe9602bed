"""Run `python -m tpu_engine.serve` as a user does (a subprocess on a free loopback port, CPU).

    with Server(["--max-model-len", "64", "--max-num-seqs", "4"]) as srv:
        httpx.post(f"{srv.url}/v1/completions", json={...})

`Server(...).start()` launches without waiting, so a test can do other slow work (an offline
engine's warm-up) while the server compiles, then call `wait_ready()`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small shapes: few buckets, so the server warms up in well under a minute on CPU.
SMALL = ["--max-model-len", "64", "--max-num-seqs", "4"]
# The server's JAX backend: the client, service-profiler and load-benchmark tests run on it (both
# backends serve the same API; its warm-up is a third of torch_xla's on CPU).
JAX = ["--backend", "jax"]
READY_TIMEOUT_S = 240.0
PROFILER_ENV = ("VLLM_TORCH_PROFILER_DIR", "SERVICE_PROF_CONFIG_PATH", "PROFILING_SYMBOLS_PATH", "PROFILING_HANDLERS",
                "VLLM_API_KEY", "VLLM_PROFILER_MAX_ITERS", "PROFILING_MAX_CAPTURE_S")
STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll_s: float = 0.1) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll_s)


class ServerError(RuntimeError):
    """The server exited early or never became healthy; the message ends with its log tail."""


class Server:
    """`python -m tpu_engine.serve *args` with PJRT_DEVICE=CPU on 127.0.0.1:<free port>.

    stdout and stderr go to `log_path` (default: a new temp file); `log()` reads it. On exit the
    server gets SIGINT, and SIGKILL if it has not stopped `STOP_GRACE_S` seconds later."""

    def __init__(self, args=(), env: dict | None = None, log_path: str | None = None,
                 timeout: float = READY_TIMEOUT_S):
        self.args = list(args)
        if "--port" in self.args:
            self.port = int(self.args[self.args.index("--port") + 1])
        else:
            self.port = free_port()
            self.args += ["--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k not in PROFILER_ENV}  # a test says what it wants
        self.env = {**inherited, "PJRT_DEVICE": "CPU", "PYTHONUNBUFFERED": "1",
                    **{k: str(v) for k, v in (env or {}).items()}}
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tpu_engine_serve_", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Server":
        """Launch the server; returns at once (see `wait_ready`)."""
        assert self.proc is None, "server already started"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tpu_engine.serve", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=ROOT)
        return self

    def wait_ready(self) -> "Server":
        """Poll GET /health until it answers 200; ServerError (with the log tail) if the server
        exits first or `timeout` seconds pass. The server is stopped before the error is raised."""
        assert self.proc is not None, "call start() first"

        def ready() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            wait_until(ready, self.timeout, "the server to become healthy", poll_s=0.5)
        except AssertionError:
            self.stop()
            raise ServerError(f"the server was not healthy after {self.timeout:.0f} s; "
                              f"log tail:\n{self.tail()}") from None
        if self.proc.poll() is not None:
            self.stop()
            raise ServerError(f"the server exited with code {self.proc.returncode} before it was "
                              f"ready; log tail:\n{self.tail()}")
        return self

    def stop(self) -> int | None:
        """SIGINT, then SIGKILL after STOP_GRACE_S; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> "Server":
        if self.proc is None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- inspection ------------------------------------------------------------------------
    def log(self) -> str:
        """The server's stdout and stderr so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def healthy(self) -> bool:
        """The process runs and GET /health answers 200 with "status": "ok" (every thread alive)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            r = httpx.get(f"{self.url}/health", timeout=30)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json().get("status") == "ok"


COLLECTING, STOPPED = "Service profiler: collecting into", "Service profiler: collection stopped"


def switch_collection(server: Server, config_path, enable: int, timeout: float = 60) -> None:
    """Set "enable" in the service profiler's config (atomically) and wait until the server has
    applied it: on disable, everything recorded is on disk once it says so."""
    said = COLLECTING if enable else STOPPED
    before = server.log().count(said)
    with open(config_path) as f:
        cfg = json.load(f)
    tmp = f"{config_path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**cfg, "enable": enable}, f)
    os.replace(tmp, config_path)
    wait_until(lambda: server.log().count(said) > before, timeout, f"the server to log {said!r}")
