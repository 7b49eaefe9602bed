"""Starting and stopping XLA traces: the profiler server, the detached (env) window, and exact
phase windows opened and closed at the engine's own step boundaries.

Captures are written into a private staging directory and moved into
`<profile dir>/plugins/profile/<run>/` only once complete, so TensorBoard never sees half a run.
"""
from __future__ import annotations

import datetime
import glob
import os
import shutil
import threading
import time

from tpu_engine.cli import check_port
from tpu_engine.events import PhaseEvent

DEFAULT_PORT = 9012


def check_port_free(port: int) -> None:
    check_port("profiler port", port, "--profiler-port")


def start_server(port: int):
    """The torch_xla profiler server (what TensorBoard's capture button and detached traces talk
    to). Keep the returned object alive for as long as the server should run."""
    check_port_free(port)
    import torch_xla.debug.profiler as xp
    return xp.start_server(port)


def check_writable_dir(path: str) -> str:
    """Create `path` if needed and prove it writable; ValueError naming it otherwise."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"profile dir {path!r} exists and is not a directory.")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"profile dir {path!r} is not writable ({e.strerror}).") from None
    return path


def list_runs(logdir: str) -> list[str]:
    """Run directories under `logdir/plugins/profile/` that hold a `.xplane.pb`."""
    return sorted({os.path.dirname(p) for p in
                   glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))})


class Staging:
    """A private directory under the profile dir where the profiler writes; `publish` moves a
    finished run into `plugins/profile/<name>` with one rename."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, f".staging-{os.getpid()}-{time.time_ns()}")
        os.makedirs(self.path)

    def runs(self) -> list[str]:
        return list_runs(self.path)

    def publish(self, run_dir: str, name: str) -> str:
        dest_root = os.path.join(self.root, "plugins", "profile")
        os.makedirs(dest_root, exist_ok=True)
        dest, n = os.path.join(dest_root, name), 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(dest_root, f"{name}_{n}")
        os.rename(run_dir, dest)
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def publish_run(staging: Staging, run_dir: str, kind: str, steps: list[dict], record: dict) -> str:
    """Write the manifest and run record beside a verified capture and move it into place."""
    from . import record as manifest
    manifest.write_manifest(run_dir, steps)
    manifest.write_run_info(run_dir, record)
    return staging.publish(run_dir, run_name(kind))


def run_name(kind: str, when: float | None = None) -> str:
    """`<kind>_<local timestamp>`: TensorBoard lists runs by directory name."""
    stamp = datetime.datetime.fromtimestamp(when or time.time()).strftime("%Y_%m_%d_%H_%M_%S")
    return f"{kind}_{stamp}"


class DetachedTrace:
    """The seed's env window: ask the profiler server for a trace starting `delay_ms` from now
    and lasting `duration_ms`, from a background thread; `wait()` for the files to land."""

    def __init__(self, port: int, logdir: str, delay_ms: int, duration_ms: int):
        self.port, self.logdir, self.delay_ms, self.duration_ms = port, logdir, delay_ms, duration_ms
        self.error: BaseException | None = None
        self.requested_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="detached-trace", daemon=True)

    def _run(self) -> None:
        import torch_xla.debug.profiler as xp
        try:
            xp.trace(f"localhost:{self.port}", self.logdir, duration_ms=self.duration_ms,
                     delay_ms=self.delay_ms, num_tracing_attempts=1, timeout_s=30)
        except BaseException as e:  # reported by wait()
            self.error = e

    def start(self) -> None:
        self.requested_at = time.time()
        self._thread.start()

    @property
    def window_opens_at(self) -> float:
        return self.requested_at + self.delay_ms / 1000

    def wait(self, slack_s: float = 60.0) -> bool:
        """Block until the trace thread ends (the capture is on disk) or the window plus
        `slack_s` has passed; True if it ended.

        While waiting, the main thread marks itself with an `idle: waiting for capture` scope
        every 50 ms: the profiler client retries a window in which nothing happened instead of
        returning, so an idle tail (or a window that opened after the passes) needs one event."""
        import torch_xla
        deadline = self.window_opens_at + self.duration_ms / 1000 + slack_s
        while self._thread.is_alive() and time.time() < deadline:
            with torch_xla._XLAC.profiler.TraceMe("idle: waiting for capture"):
                self._thread.join(0.05)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def profiler_session():
    import torch_xla
    return torch_xla._XLAC.profiler.TslProfilerSessionWrapper()


class PhaseWindow:
    """An exact capture window driven by the engine's phase events.

    Subscribe `on_event` to `engine.events`. The trace starts at the `begin` event of the first
    step that matches and stops at the `end` event of the last one, so the capture holds whole
    matching steps and nothing else: it closes early if a non-matching step is about to run,
    and after `max_steps` steps. `phase` is "prefill", "decode" or "all"; decode steps can be
    limited to those with at least `min_batch` sequences and a longest context of at least
    `min_kv_len` tokens. Exporting the capture is deferred to `export()`, after the timed pass.
    """

    def __init__(self, phase: str, max_steps: int | None = None, min_batch: int = 1, min_kv_len: int = 0):
        self.phase, self.max_steps, self.min_batch, self.min_kv_len = phase, max_steps, min_batch, min_kv_len
        self.steps: list[int] = []
        self.state = "waiting"        # -> "open" -> "closed"
        self._session = None
        self._xspace: bytes | None = None
        self.opened_at = self.closed_at = None

    def matches(self, e: PhaseEvent) -> bool:
        if self.phase != "all" and e.phase != self.phase:
            return False
        if e.phase == "decode":
            return e.batch_size >= self.min_batch and e.kv_len_max >= self.min_kv_len
        return True

    def on_event(self, e: PhaseEvent) -> None:
        if e.kind == "begin":
            if self.state == "waiting" and self.matches(e):
                self._session = profiler_session()
                self.opened_at = time.time()
                self.state = "open"
            elif self.state == "open" and not self.matches(e):
                self.close()
        elif self.state == "open":
            self.steps.append(e.step)
            if self.max_steps is not None and len(self.steps) >= self.max_steps:
                self.close()

    def close(self) -> None:
        """Stop tracing now (idempotent); the trace stays in memory until `export`."""
        if self.state == "open":
            self._xspace = self._session.stop()
            self.closed_at = time.time()
            self.state = "closed"

    def export(self, logdir: str) -> bool:
        """Write the capture under `logdir/plugins/profile/`; False if the window never opened."""
        self.close()
        if self._xspace is None:
            return False
        self._session.export(self._xspace, logdir)
        self._xspace = None
        return True
