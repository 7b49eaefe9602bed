"""JAX's profiler (`jax.profiler`), the twin of torch_xla/profiler.py: the profiler server, an
in-process trace session, a detached trace requested from the server (through the client
`python -m jax.collect_profile` uses), and a host marker. Nothing here imports torch_xla.

Options, set with TPU_PROFILER_HOST_TRACER_LEVEL and TPU_PROFILER_PYTHON_TRACER_LEVEL: the
host tracer level is the main knob on capture size (0 turns it off, and with it the step
annotations and CPU op events the tables are built from); the python tracer is off by default,
as it records every Python call and floods the capture.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import time
from collections.abc import Iterator

from ...cli import check_profiler_port

HOST_LEVEL_ENV, PYTHON_LEVEL_ENV = "TPU_PROFILER_HOST_TRACER_LEVEL", "TPU_PROFILER_PYTHON_TRACER_LEVEL"


@dataclasses.dataclass(frozen=True)
class Options:
    """What users may change about a JAX trace."""
    host_tracer_level: int = 2    # host events up to this level: 1 critical, 2 info, 3 verbose; 0: none
    python_tracer_level: int = 0  # 1 records every Python function call

    @classmethod
    def from_env(cls, environ=os.environ) -> Options:
        """The options, with the env overrides; ValueError on a value that is not a level."""
        values = {}
        for name, field, top in ((HOST_LEVEL_ENV, "host_tracer_level", 3),
                                 (PYTHON_LEVEL_ENV, "python_tracer_level", 1)):
            raw = environ.get(name, "").strip()
            if raw:
                if not re.fullmatch(r"[0-9]{1,3}", raw) or int(raw) > top:  # ASCII only: isdigit() takes superscripts
                    raise ValueError(f"{name}={raw!r} must be a tracer level from 0 to {top}.")
                values[field] = int(raw)
        return cls(**values)

    def profile_options(self):
        """As `jax.profiler.ProfileOptions`, for an in-process session."""
        import jax
        o = jax.profiler.ProfileOptions()
        o.host_tracer_level = self.host_tracer_level
        o.python_tracer_level = self.python_tracer_level
        return o

    def client_options(self) -> dict[str, int]:
        """As the options dict the profiler client sends to a server."""
        return {"host_tracer_level": self.host_tracer_level, "device_tracer_level": 1,
                "python_tracer_level": self.python_tracer_level}


def start_server(port: int):
    """The profiler server (what TensorBoard's capture button and detached traces talk to).
    Keep the returned object alive for as long as the server should run."""
    check_profiler_port(port)
    import jax
    return jax.profiler.start_server(port)


class Session:
    """An in-process trace: running from construction until `stop()`, which returns the
    capture (an XSpace, in memory); `export` writes it under `<logdir>/plugins/profile/<run>/`.

    Built on the session under `jax.profiler.start_trace` rather than on start/stop_trace
    themselves: those export at once, and a phase window exports after the timed pass."""

    def __init__(self, options: Options | None = None):
        import jax
        from jax._src.lib import _profiler
        jax.devices()  # start the backend first: its tracers register when it starts
        self._session = _profiler.ProfilerSession((options or Options.from_env()).profile_options())

    def stop(self) -> bytes:
        return self._session.stop()

    def export(self, xspace: bytes, logdir: str) -> None:
        """Write `<logdir>/plugins/profile/<time>/<host>.xplane.pb`, as JAX's own export does,
        but without the trace-viewer JSON it converts alongside: XProf does not need it, and
        converting takes about a second per 6 MB of capture."""
        base = os.path.join(logdir, "plugins", "profile", time.strftime("%Y_%m_%d_%H_%M_%S"))
        run, n = base, 0
        while True:
            try:
                os.makedirs(run)
                break
            except FileExistsError:  # a second export in the same second
                n += 1
                run = f"{base}_{n}"
        with open(os.path.join(run, f"{socket.gethostname()}.xplane.pb"), "wb") as f:
            f.write(xspace)


def request_trace(port: int, logdir: str, delay_ms: int, duration_ms: int,
                  options: Options | None = None) -> None:
    """Ask the profiler server on `port` for a trace starting `delay_ms` from now and lasting
    `duration_ms`; blocks until the capture is written under `logdir` (call from a thread).
    The same client call `python -m jax.collect_profile` makes, with a start time added."""
    from xprof.convert import _pywrap_profiler_plugin
    opts = {**(options or Options.from_env()).client_options(), "delay_ms": delay_ms}
    _pywrap_profiler_plugin.trace(f"localhost:{port}", logdir, "", True, duration_ms, 1, opts)


@contextlib.contextmanager
def marker(name: str) -> Iterator[None]:
    """A named host event in the trace (a TraceMe) around the block."""
    import jax
    with jax.profiler.TraceAnnotation(name):
        yield


def check_settings() -> None:
    """ValueError (one sentence naming the variable) for a profiler setting that is not a level."""
    Options.from_env()
