"""The collection config: a JSON file named by SERVICE_PROF_CONFIG_PATH, written with defaults
if missing, and re-read while the server runs, so flipping `"enable"` starts or stops
collection without a restart.

    {"enable": 0,                      0 or 1
     "output_dir": "service_profile",  where each server process gets <time>_<pid>/events.jsonl
     "domains": [],                    only these domains (empty: all)
     "poll_interval_ms": 500,          how often the file is checked
     "flush_interval_ms": 200}         how often events are written out
"""
from __future__ import annotations

import json
import os
import sys
import threading

CONFIG_ENV = "SERVICE_PROF_CONFIG_PATH"
DEFAULTS = {"enable": 0, "output_dir": "service_profile", "domains": [],
            "poll_interval_ms": 500, "flush_interval_ms": 200}


def read_config(path: str) -> dict:
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
    if cfg["enable"] not in (0, 1, True, False):
        raise ValueError(f"service profiler config {path!r}: enable={cfg['enable']!r} must be 0 or 1.")
    if not isinstance(cfg["output_dir"], str) or not cfg["output_dir"]:
        raise ValueError(f"service profiler config {path!r}: output_dir must be a directory path.")
    if not isinstance(cfg["domains"], list) or not all(isinstance(d, str) for d in cfg["domains"]):
        raise ValueError(f"service profiler config {path!r}: domains must be a list of names.")
    for key in ("poll_interval_ms", "flush_interval_ms"):
        v = cfg[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"service profiler config {path!r}: {key}={v!r} must be a positive number.")
    # A relative output_dir is relative to the config file, so the server's cwd does not matter.
    cfg["output_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), cfg["output_dir"])
    cfg["enable"] = bool(cfg["enable"])
    return cfg


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
    that becomes unreadable is reported once and the last good one stays in force."""

    def __init__(self, path: str, apply):
        self.path, self.apply = path, apply
        self.config = read_config(path)
        self._stamp = self._stat()
        self._stop = threading.Event()
        self._bad: str | None = None
        apply(self.config)
        self._thread = threading.Thread(target=self._loop, name="service-profiler-config", daemon=True)
        self._thread.start()

    def _stat(self):
        try:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except OSError:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.config["poll_interval_ms"] / 1000):
            self.check()

    def check(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config = read_config(self.path)
        except ValueError as e:
            if str(e) != self._bad:
                print(f"warning: {e} Keeping the previous settings.", file=sys.stderr)
                self._bad = str(e)
            return
        self._bad = None
        self.config = config
        self.apply(config)

    def stop(self) -> None:
        self._stop.set()
