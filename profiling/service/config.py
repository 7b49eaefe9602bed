"""The collection config: a JSON file named by SERVICE_PROF_CONFIG_PATH, written with defaults
if missing, and re-read while the server runs, so flipping `"enable"` starts or stops
collection without a restart.

    {"enable": 0,                      0 or 1
     "output_dir": "service_profile",  where each server process gets <time>_<pid>/events.jsonl
     "domains": [],                    only these domains (empty: all)
     "poll_interval_ms": 500,          how often the file is checked (10 to 60000)
     "flush_interval_ms": 200}         how often events are written out (10 to 60000)

Every number must be finite and in its range (NaN, Infinity or 1e300 once made the writer spin
or die); a bad edit while the server runs is reported once and the last good config stays.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading

CONFIG_ENV = "SERVICE_PROF_CONFIG_PATH"
DEFAULTS = {"enable": 0, "output_dir": "service_profile", "domains": [],
            "poll_interval_ms": 500, "flush_interval_ms": 200}
INTERVAL_MS = (10, 60_000)   # the accepted range of both intervals


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The config as checked; `output_dir` made absolute (relative to the config file)."""
    enable: bool
    output_dir: str
    domains: tuple[str, ...]
    poll_interval_ms: float
    flush_interval_ms: float


def read_config(path: str) -> ServiceConfig:
    """The config with defaults filled in; ValueError with one sentence if it is not usable."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise ValueError(f"service profiler config {path!r} cannot be read ({e.strerror}).") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"service profiler config {path!r} is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise ValueError(f"service profiler config {path!r} must hold a JSON object.")
    cfg = {**DEFAULTS, **raw}
    where = f"service profiler config {path!r}"
    if isinstance(cfg["enable"], float) or cfg["enable"] not in (0, 1, True, False):  # 1.0 and nan too
        raise ValueError(f"{where}: enable={_show(cfg['enable'])} must be 0 or 1.")
    out = cfg["output_dir"]
    if not isinstance(out, str) or not out.strip() or "\0" in out:
        raise ValueError(f"{where}: output_dir={_show(out)} must be a directory path.")
    if not isinstance(cfg["domains"], list) or not all(isinstance(d, str) for d in cfg["domains"]):
        raise ValueError(f"{where}: domains={_show(cfg['domains'])} must be a list of names.")
    low, high = INTERVAL_MS
    for key in ("poll_interval_ms", "flush_interval_ms"):
        v = cfg[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low <= v <= high:
            raise ValueError(f"{where}: {key}={_show(v)} must be a number of milliseconds from {low} to {high}.")
    # A relative output_dir is relative to the config file, so the server's cwd does not matter.
    return ServiceConfig(bool(cfg["enable"]), os.path.join(os.path.dirname(os.path.abspath(path)), out),
                         tuple(cfg["domains"]), cfg["poll_interval_ms"], cfg["flush_interval_ms"])


def _show(v) -> str:
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**40 else "a huge integer"
    return text if len(text) <= 60 else text[:60] + "…"


def ensure_config(path: str) -> bool:
    """Write the default config at `path` if nothing is there; True if it was written."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(DEFAULTS, f, indent=2)
        f.write("\n")
    return True


class ConfigWatcher:
    """Polls the config file and calls `apply(config)` whenever its content changes. A config
    that becomes unreadable is reported once and the last good one stays in force; an error
    of the watcher's own (or of `apply`) is reported once and the watching goes on."""

    def __init__(self, path: str, apply):
        self.path, self.apply = path, apply
        self.config = read_config(path)
        self._stamp = self._stat()
        self._stop = threading.Event()
        self._bad: str | None = None
        apply(self.config)
        self.thread = threading.Thread(target=self._loop, name="service-profiler-config", daemon=True)
        self.thread.start()

    def _stat(self):
        try:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except OSError:
            return None

    def _loop(self) -> None:
        low, high = INTERVAL_MS
        while not self._stop.wait(min(max(self.config.poll_interval_ms, low), high) / 1000):
            try:
                self.check()
            except Exception as e:  # the watcher is what applies "enable": 0, so it must live
                self._report(f"warning: the service profiler's config watcher failed ({type(e).__name__}: "
                             f"{e}); it goes on watching {self.path}.")

    def _report(self, message: str) -> None:
        """Say it once: the same problem on every poll is one line."""
        if message != self._bad:
            print(message, file=sys.stderr, flush=True)
            self._bad = message

    def check(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config = read_config(self.path)
        except ValueError as e:
            self._report(f"warning: {e} Keeping the previous settings.")
            return
        self.config = config
        self.apply(config)
        self._bad = None   # only once applied: the same apply failure again is not news

    def stop(self) -> None:
        self._stop.set()
