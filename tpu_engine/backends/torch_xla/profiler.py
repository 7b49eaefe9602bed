"""The torch_xla profiler, and nothing else of it anywhere in `profiling/`: the profiler server,
an in-process trace session, a detached trace requested from the server, and a host marker.

Every backend's profiler.py offers the same five calls (these four and `check_settings`); the
capture side (profiling/capture/profilers.py) picks the engine's through the registry.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ...cli import check_profiler_port



def start_server(port: int):
    """The profiler server (what TensorBoard's capture button and detached traces talk to).
    Keep the returned object alive for as long as the server should run."""
    check_profiler_port(port)
    import torch_xla.debug.profiler as xp
    return xp.start_server(port)


class Session:
    """An in-process trace: running from construction until `stop()`, which returns the
    capture (an XSpace, in memory); `export` writes it under `<logdir>/plugins/profile/<run>/`."""

    def __init__(self):
        import torch_xla
        self._session = torch_xla._XLAC.profiler.TslProfilerSessionWrapper()

    def stop(self) -> bytes:
        return self._session.stop()

    def export(self, xspace: bytes, logdir: str) -> None:
        self._session.export(xspace, logdir)


def request_trace(port: int, logdir: str, delay_ms: int, duration_ms: int) -> None:
    """Ask the profiler server on `port` for a trace starting `delay_ms` from now and lasting
    `duration_ms`; blocks until the capture is written under `logdir` (call from a thread)."""
    import torch_xla.debug.profiler as xp
    xp.trace(f"localhost:{port}", logdir, duration_ms=duration_ms, delay_ms=delay_ms,
             num_tracing_attempts=1, timeout_s=30)


@contextlib.contextmanager
def marker(name: str) -> Iterator[None]:
    """A named host event in the trace (a TraceMe) around the block."""
    import torch_xla
    with torch_xla._XLAC.profiler.TraceMe(name):
        yield


def check_settings() -> None:
    """torch_xla's profiler takes no settings from the environment."""
