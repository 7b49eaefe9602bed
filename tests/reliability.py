"""Helpers of the reliability tests: run a CLI in-process, check its error shape, damage files,
and mount a small tmpfs where the machine allows it."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess

import pytest
from hypothesis import strategies as st

# Any JSON value, with the edges that broke readers before: huge integers, infinity, ". ".
EDGES = st.sampled_from([10 ** 400, -(10 ** 30), 2 ** 63, 2 ** 31, 0, -1, 1e300, float("inf"), "", ". ", "\n"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | EDGES,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@dataclasses.dataclass
class Result:
    code: int | None
    out: str
    err: str


def run_main(main, argv: list[str]) -> Result:
    """`main(argv)` (a CLI entry point that exits), its exit status and output; any exception
    but SystemExit propagates, so a traceback fails the test."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    return Result(code, out.getvalue(), err.getvalue())


def one_sentence(msg: str, *fragments: str) -> str:
    """`msg` is one sentence (no line break, one full stop at the end) holding every fragment."""
    msg = msg.strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert not re.search(r"\.\s", msg.rstrip(".")), f"more than one sentence: {msg}"
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def failed(res: Result, *fragments: str) -> str:
    """The command exited 2 with one `error: ...` sentence (argparse's usage lines may precede
    it) naming every fragment, and no traceback."""
    assert res.code == 2, f"exit {res.code}\nstdout: {res.out[-2000:]}\nstderr: {res.err[-2000:]}"
    assert "Traceback" not in res.err, res.err
    last = res.err.strip().splitlines()[-1]
    assert "error: " in last, res.err
    return one_sentence(last.split("error: ", 1)[1], *fragments)


@contextlib.contextmanager
def small_tmpfs(path: str, size: str = "1m"):
    """A tmpfs of `size` mounted at `path` (root, or a container allowed to mount); skips the
    test with one line where mounting is not possible."""
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or 'mount failed').strip().splitlines()[0]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


def fill(path: str, leave_bytes: int) -> None:
    """Fill the file system holding `path` until about `leave_bytes` remain free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def listing(path: str) -> list[str]:
    """Every file and folder under `path`, relative to it."""
    out = []
    for d, dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(d, n), path) for n in dirs + files]
    return sorted(out)
