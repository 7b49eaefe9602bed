"""A damaged service profile (`events.jsonl`): `service parse` ends in exit 2 with one sentence
naming the file and line, or parses what it can; never a traceback, never a half-written output.
The events file is written by the real service collector from a real capture's engine steps."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling.cli import cli
from profiling.runs.record import read_manifest
from profiling.service import output
from profiling.service.collector import Collector
from profiling.service.engine_spans import EngineSpans
from tests.reliability import JSON, failed, one_sentence, run_main
from tests.servers import ROOT
from tpu_engine.events import PhaseEvent

pytestmark = pytest.mark.slow


# ---- events.jsonl (service parse) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def events_src(all_capture, tmp_path_factory) -> str:
    """A service profile written by the real collector, from the real capture's engine steps."""
    root = str(tmp_path_factory.mktemp("events"))
    collector = Collector()
    spans = EngineSpans(collector)
    try:
        collector.start(root)
        for r in read_manifest(all_capture.run):
            spans.on_phase(PhaseEvent("begin", r))
            spans.on_phase(PhaseEvent("end", r))
        collector.stop()
    finally:
        collector.close()
    return root


def _events_copy(events_src: str, dest: str) -> tuple[str, list[str]]:
    shutil.copytree(events_src, dest)
    path = glob.glob(os.path.join(dest, "*", "events.jsonl"))[0]
    with open(path) as f:
        return path, f.read().splitlines()


DEEP_SPAN = '{"type": "span", "domain": "A", "name": "b", "start": 1, "end": 2, "attrs": {"x": %s}}'


@pytest.mark.parametrize("line, fragment", [
    (DEEP_SPAN % ("[" * 900 + "]" * 900), "line 2"),
    (DEEP_SPAN % ("[" * 100000 + "]" * 100000), "line 2"),
    (DEEP_SPAN % "NaN", "line 2"),
    ("[1, 2]", "line 2"),
], ids=["nested 900 deep", "nested 100000 deep", "NaN", "a list"])
def test_damaged_events_line_is_one_sentence(events_src, tmp_path, line, fragment):
    path, lines = _events_copy(events_src, str(tmp_path / "svc"))
    with open(path, "w") as f:
        f.write("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    failed(run_main(cli, ["service", "parse", str(tmp_path / "svc")]), path, fragment)
    assert not os.path.exists(tmp_path / "svc" / "output" / "chrome_tracing.json")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_events_line_is_refused_or_parsed(events_src, tmp_path_factory, data):
    root = str(tmp_path_factory.mktemp("e"))
    path, lines = _events_copy(events_src, os.path.join(root, "svc"))
    at = data.draw(st.integers(0, len(lines)))
    line = json.dumps(data.draw(JSON)) if data.draw(st.booleans()) else data.draw(st.text(max_size=40))
    lines.insert(at, line.replace("\n", " ").replace("\r", " "))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        res = output.parse(os.path.join(root, "svc"), os.path.join(root, "out"))
    except ValueError as e:
        one_sentence(str(e), path)
        assert not os.path.exists(os.path.join(root, "out", "chrome_tracing.json"))
        return
    assert "chrome_tracing.json" in res.written


def test_a_fifo_named_events_jsonl_is_refused_not_read(tmp_path):
    """`service parse` reads through the validating run-file reader: a FIFO (which open() would
    block on forever) is one sentence, exit 2."""
    (tmp_path / "svc" / "run").mkdir(parents=True)
    fifo = tmp_path / "svc" / "run" / "events.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "profiling", "service", "parse", str(tmp_path / "svc")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    one_sentence(proc.stderr.strip().splitlines()[-1], f"{fifo} is not a regular file")
