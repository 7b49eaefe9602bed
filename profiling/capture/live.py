"""XLA traces of a live server, started and stopped on request (`POST /start_profile`,
`POST /stop_profile`), into the directory named by VLLM_TORCH_PROFILER_DIR.

The trace opens and closes between two engine steps (the calls run in the engine's thread),
so a capture holds whole steps. Each capture is exported, verified and published exactly as
offline ones are: `<dir>/plugins/profile/serve-<phases>_<time>/` with the `.xplane.pb`,
`manifest.jsonl` (one line per captured step) and `run_info.json`.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from . import record as manifest
from . import windows as capture
from .verify import check_capture

DIR_ENV = "VLLM_TORCH_PROFILER_DIR"


class ProfileStateError(ValueError):
    """Start while a capture runs, or stop while none does."""


class LiveCapture:
    def __init__(self, root: str, engine):
        self.root = capture.check_writable_dir(root)
        self.engine = engine          # the LLMEngine (phase events, describe)
        self._lock = threading.Lock()
        self._session = None
        self._steps: manifest.StepLog | None = None
        self._unsubscribe = None
        self.opened_at: float | None = None

    @property
    def running(self) -> bool:
        return self._session is not None

    def start(self) -> dict:
        """Open the trace now; call between engine steps."""
        with self._lock:
            if self._session is not None:
                raise ProfileStateError("a profile capture is already running; POST /stop_profile first.")
            self._steps = manifest.StepLog()
            self._unsubscribe = self.engine.events.subscribe(self._steps.on_event)
            self._session = capture.profiler_session()
            self.opened_at = time.time()
            return {"status": "profiling", "profile_dir": self.root, "started": self.opened_at}

    def stop(self):
        """Close the trace now (call between engine steps); returns what `finish` needs."""
        with self._lock:
            if self._session is None:
                raise ProfileStateError("no profile capture is running; POST /start_profile first.")
            session, self._session = self._session, None
            xspace = session.stop()
            self._unsubscribe()
            return session, xspace, self._steps, self.opened_at, time.time()

    def finish(self, stopped) -> dict:
        """Export, verify and publish a stopped capture (slow: run it off the engine thread)."""
        session, xspace, steps, opened, closed = stopped
        staging = capture.Staging(self.root)
        try:
            session.export(xspace, staging.path)
            runs = staging.runs()
            if not runs:
                raise ValueError("the profiler exported no capture.")
            check = check_capture(runs[-1])
            found = sorted(n for v in check.steps.values() for n in v)
            phases = "-".join(p for p in ("prefill", "decode") if check.steps.get(p)) or "idle"
            record = dict(command=manifest.command_line(), env=manifest.environment(),
                          versions=manifest.versions(), engine=self.engine.describe(),
                          model_config=dataclasses.asdict(self.engine.model_config),
                          peaks=_peaks(self.engine), window=dict(kind="server", opened=opened, closed=closed),
                          capture=dict(window_opened=opened, window_closed=closed,
                                       written_after_stop_s=time.time() - closed),
                          verification=check.record())
            dest = capture.publish_run(staging, runs[-1], f"serve-{phases}", steps.select(found), record)
        finally:
            staging.discard()
        return {"status": "saved", "run": dest, "bytes": check.bytes, "steps": check.steps,
                "num_steps": check.num_steps, "duration_s": closed - opened,
                "summary": f"{dest}: {check.describe()}"}


def _peaks(engine) -> dict | None:
    """TPU peaks from the table; on other hosts none (measuring would disturb the service)."""
    from ..analysis.roofline import tpu_peaks
    info = engine.describe()
    found = tpu_peaks(info.get("device_kind", "")) if info.get("platform") == "TPU" else None
    if found is None:
        return None
    return dict(flops_per_s=found[0], bytes_per_s=found[1], source=f"table ({info['device_kind']})")
