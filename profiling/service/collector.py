"""The event collector: instrumented calls append a tuple to a list (cheap, under the GIL);
a writer thread turns them into JSON lines in an append-only file every `flush_interval_ms`.

File format (`<output_dir>/<start time>_<pid>/events.jsonl`), one JSON object per line:
  {"type": "header", "pid", "host", "wall_ns", "perf_ns", "version"}   first line; perf -> wall
  {"type": "span", "domain", "name", "start", "end", "tid", "thread", "attrs"}   perf_counter ns
  {"type": "marker", "name": "enable" | "disable", "t"}                 collection switched
"""
from __future__ import annotations

import collections
import datetime
import json
import math
import os
import socket
import sys
import threading
import time

EVENTS_FILE = "events.jsonl"


class Collector:
    def __init__(self):
        self.enabled = False
        self.domains: frozenset[str] = frozenset()   # empty: every domain
        self.flush_interval_s = 0.2
        self.path: str | None = None
        self.output_dir: str | None = None   # where the open file is (absolute)
        self.recorded = 0
        self._buffer: collections.deque = collections.deque()  # append/popleft are atomic
        self._file = None
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def writer(self) -> threading.Thread | None:
        """The writer thread (None until collection first starts)."""
        return self._writer

    def wants(self, domain: str) -> bool:
        return self.enabled and (not self.domains or domain in self.domains)

    def record(self, domain: str, name: str, start_ns: int, end_ns: int, attrs: dict | None = None) -> None:
        """One span, times from time.perf_counter_ns(). Safe from any thread."""
        self._buffer.append(("span", domain, name, start_ns, end_ns, threading.get_ident(), attrs))

    # ---- switching ----------------------------------------------------------------------------
    def start(self, output_dir: str) -> None:
        """Begin (or resume) collecting into this process's events file under `output_dir`; a
        different `output_dir` than the open file's moves collection to a new file there.
        OSError (nothing changes) if that directory cannot be written."""
        with self._lock:
            target = os.path.abspath(output_dir)
            if self._file is not None and self.output_dir != target:
                self._open(target)   # the new file first: if it fails, the old one stays
                if self.enabled:     # the new file reads on its own: it starts with a marker
                    self._buffer.append(("marker", "enable", time.perf_counter_ns()))
            if self.enabled:
                return
            if self._file is None:
                self._open(target)
            self._buffer.append(("marker", "enable", time.perf_counter_ns()))
            self.enabled = True
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="service-profiler-writer", daemon=True)
                self._writer.start()

    def stop(self) -> None:
        """Stop collecting; what was recorded is written out at once."""
        with self._lock:
            if not self.enabled:
                return
            self.enabled = False
            self._buffer.append(("marker", "disable", time.perf_counter_ns()))
        self.flush()

    def close(self) -> None:
        self.stop()
        self._stop.set()
        if self._writer is not None:
            self._writer.join(5)
        self.flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self, output_dir: str) -> None:
        """Open a new events file under `output_dir` (lock held); what the old file was owed is
        written to it and it is closed."""
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        run_dir = os.path.join(output_dir, f"{stamp}_{os.getpid()}")
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, EVENTS_FILE)
        new = open(path, "a", buffering=1 << 16)
        from ..runs.record import versions
        header = {"type": "header", "pid": os.getpid(), "host": socket.gethostname(),
                  "wall_ns": time.time_ns(), "perf_ns": time.perf_counter_ns(), "version": versions()}
        new.write(json.dumps(header) + "\n")
        new.flush()
        if self._file is not None:
            self._write_pending()
            self._file.close()
        self._file, self.path, self.output_dir = new, path, output_dir

    # ---- writing ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        """Every flush interval, write what was recorded. An error is reported once (per kind)
        and the loop goes on: a dead writer would hold every span in memory."""
        seen: set[str] = set()
        while not self._stop.wait(_sane_interval(self.flush_interval_s)):
            try:
                self.flush()
            except Exception as e:
                if type(e).__name__ not in seen:
                    seen.add(type(e).__name__)
                    print(f"warning: service profiler writer: {describe(e)}; it goes on (reported once).",
                          file=sys.stderr, flush=True)

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._file is None or not self._buffer:
            return
        batch = [self._buffer.popleft() for _ in range(len(self._buffer))]
        names = {t.ident: t.name for t in threading.enumerate()}
        lines, bad = [], 0
        for item in batch:
            try:
                lines.append(_line(item, names))
            except Exception:  # an attribute JSON cannot hold (a cycle, a str() that raises): drop it
                bad += 1
        if bad:
            print(f"warning: service profiler dropped {bad} event(s) that could not be written as JSON.",
                  file=sys.stderr, flush=True)
        try:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
        except OSError as e:  # a full disk must not break serving: stop collecting
            print(f"warning: service profiler could not write {self.path} ({e}); collection stopped.",
                  file=sys.stderr)
            self.enabled = False
            return
        self.recorded += sum(1 for item in batch if item[0] == "span") - bad


def _line(item: tuple, names: dict) -> str:
    if item[0] == "span":
        _, domain, name, start, end, tid, attrs = item
        return json.dumps({"type": "span", "domain": domain, "name": name, "start": start, "end": end,
                           "tid": tid, "thread": names.get(tid, str(tid)), "attrs": attrs or {}}, default=_plain)
    return json.dumps({"type": "marker", "name": item[1], "t": item[2]})


def _sane_interval(seconds) -> float:
    """The writer's wait, whatever was set: a NaN, negative or huge interval once made it spin
    or die (the config refuses them; this is the last guard)."""
    return min(max(seconds, 0.01), 60.0) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.2


def describe(e: BaseException) -> str:
    """`Type: message` on one line, whatever the exception's str() does."""
    try:
        text = " ".join(str(e).split())
    except Exception:
        text = "(unprintable)"
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _plain(o):
    """Attribute values that JSON cannot hold are written as their str()."""
    return str(o)


COLLECTOR = Collector()


def record(domain: str, name: str, start_ns: int, end_ns: int, attrs: dict | None = None) -> None:
    """For custom handlers: record one span when collection is on for `domain`."""
    if COLLECTOR.wants(domain):
        COLLECTOR.record(domain, name, start_ns, end_ns, attrs)
