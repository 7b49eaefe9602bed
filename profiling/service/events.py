"""Reading the service profiler's events files (`events.jsonl`, one per server process, written
by `collector.py`) into spans and markers on one wall clock."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from ..runs.files import RunFileError, parse_json, read_bytes
from .collector import EVENTS_FILE


@dataclasses.dataclass(slots=True)
class Span:
    domain: str
    name: str
    start: int                      # wall-clock ns
    end: int
    thread: tuple[int, Any, str]    # (source file, thread id, thread name)
    src: int                        # which events file (one per server process)
    attrs: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.domain, self.name


@dataclasses.dataclass(slots=True)
class Marker:
    name: str                       # "enable" or "disable"
    t: int                          # wall-clock ns
    src: int


def find_event_files(path: str) -> list[str]:
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist.")
    if os.path.isfile(path):
        return [path]
    found = [os.path.join(d, EVENTS_FILE) for d, _, files in os.walk(path) if EVENTS_FILE in files]
    if not found:
        raise ValueError(f"no {EVENTS_FILE} found under {path!r}.")
    return sorted(found)


def _valid(e) -> bool:
    if not isinstance(e, dict) or not isinstance(e.get("type"), str):
        return False
    ints = {"header": ("wall_ns", "perf_ns"), "span": ("start", "end"), "marker": ("t",)}.get(e.get("type"), ())
    if not all(isinstance(e.get(k), int) for k in ints):
        return False
    return e.get("type") != "span" or (isinstance(e.get("domain"), str) and isinstance(e.get("name"), str)
                                       and isinstance(e.get("attrs", {}), dict) and e["end"] >= e["start"])


def _lines(path: str) -> list[dict]:
    """The file's events; a corrupt last line (a writer killed mid-line) is skipped with a
    warning, any other is an error naming the line."""
    # The validating reader: a FIFO, a device or a directory is refused, never read (a FIFO
    # would block forever). Bad bytes make a bad line (reported below), not a failed file.
    text = read_bytes(path).decode("utf-8", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    events = []
    for i, (n, line) in enumerate(lines):
        try:
            e = parse_json(line, path)  # also refuses NaN and absurd nesting (json.dump would fail later)
        except RunFileError:
            e = None
        if not _valid(e) or (i == 0) != (e.get("type") == "header"):
            if i == len(lines) - 1:
                print(f"warning: {path}: line {n} is incomplete (the writer stopped mid-line); skipped.",
                      file=sys.stderr)
                break
            raise ValueError(f"{path}: line {n} is not a valid service profiler event.")
        events.append(e)
    return events


def read_events(path: str, src: int) -> tuple[dict | None, list[Span], list[Marker]]:
    """(header, spans, markers) of one file, times converted to wall-clock ns."""
    events = _lines(path)
    if not events:
        return None, [], []
    header = events[0]
    offset = header["wall_ns"] - header["perf_ns"]
    spans, markers = [], []
    for e in events[1:]:
        if e["type"] == "span":
            spans.append(Span(e["domain"], e["name"], e["start"] + offset, e["end"] + offset,
                              (src, e.get("tid"), str(e.get("thread", ""))), src, e.get("attrs") or {}))
        elif e["type"] == "marker":
            markers.append(Marker(str(e.get("name")), e["t"] + offset, src))
    return header, spans, markers
