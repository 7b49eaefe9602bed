"""The one way run files are read and written: `manifest.jsonl`, `run_info.json`, `events.jsonl`,
the `.xplane.pb`, and the exports of `summarize`.

Reading: a file that is missing, a directory, unreadable, not UTF-8, not JSON, nested absurdly
deep, or whose records have fields of the wrong type is a `RunFileError` (a ValueError) whose
message is one sentence naming the file, the line and the field. Writing: each file goes to a
temporary file beside it and is renamed into place once complete, so a full disk leaves no half
file; `Outputs` removes every file of a command when a later one fails.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from typing import Any, Callable, Iterator, TypeVar

from . import fieldcheck
from .fieldcheck import RunFileError

T = TypeVar("T")
MAX_DEPTH = 64          # run files nest a few levels; deeper JSON is damage (and breaks json.dump)



def where(path: str, line: int | None = None) -> str:
    return f"{path}, line {line}" if line is not None else path


# ---- reading -----------------------------------------------------------------------------------
def read_bytes(path: str) -> bytes:
    """The file's bytes; RunFileError if it is not a readable regular file."""
    fd = _open_regular(path)
    try:
        with open(fd, "rb") as f:
            return f.read()
    except OSError as e:
        raise RunFileError(f"cannot read {path} ({e.strerror or type(e).__name__}).") from None


def _open_regular(path: str) -> int:
    """A descriptor of `path`, opened without blocking and checked on the open file: a FIFO (or
    one swapped in after a check by name) would block a read forever, a device never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise RunFileError(f"{path} is a directory, not a file.") from None
    except OSError as e:
        raise RunFileError(f"cannot read {path} ({e.strerror or type(e).__name__}).") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise RunFileError(f"{path} is a directory, not a file." if stat.S_ISDIR(mode) else
                           f"{path} is not a regular file.")
    return fd


def read_head(path: str, size: int) -> bytes:
    """The first `size` bytes (a header check before a large file is read whole)."""
    fd = _open_regular(path)
    with open(fd, "rb") as f:
        return f.read(size)


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path} is not UTF-8 text (byte {e.start}).") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, at: str) -> Any:
    """One JSON value; RunFileError naming `at` (a file, or a file and line) otherwise."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{at} is not valid JSON ({e.msg} at column {e.colno}).") from None
    except RecursionError:
        raise RunFileError(f"{at} nests JSON deeper than {MAX_DEPTH} levels.") from None
    except ValueError as e:  # NaN/Infinity, or an integer of thousands of digits
        raise RunFileError(f"{at} is not valid JSON ({str(e).split('.')[0].split(';')[0]}).") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise RunFileError(f"{at} nests JSON deeper than {MAX_DEPTH} levels.")
    return value


def _depth(value: Any) -> int:
    """How deep lists and objects nest (without recursion: the value may be thousands deep)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def read_json(path: str) -> Any:
    return parse_json(read_text(path), path)


def json_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line."""
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield n, line


def build(at: str, data: Any, cls: type[T], make: Callable[[Any], T], required: tuple[str, ...] = ()) -> T:
    """`make(data)` (a `from_json`) as a `cls`, checked against `cls`'s field types before and
    after; `required` names fields that may not be null here. RunFileError naming `at` and the
    field otherwise."""
    if not isinstance(data, dict):
        raise RunFileError(f"{at} holds {fieldcheck.show(data)}; expected a JSON object.")
    fieldcheck.check_raw(data, cls, "", at)
    try:
        record = make(data)
    except RunFileError:
        raise
    except KeyError as e:
        raise RunFileError(f"{at} lacks the field {e.args[0]!r}.") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise RunFileError(f"{at} is not a valid record ({fieldcheck.first_sentence(e)}).") from None
    fieldcheck.check_value(record, cls, "", at)
    for name in required:
        if getattr(record, name) is None:
            raise RunFileError(f"{at}: field {name!r} is missing or null; expected a value.")
    return record


def space_note(path: str) -> str:
    """`; its disk is full` when the file system holding `path` has (almost) no room left: why a
    capture the profiler wrote may be empty."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return ""
    return f"; the disk holding it is full, {free} bytes free" if free < 1 << 20 else ""


# ---- writing -----------------------------------------------------------------------------------
def write_file(path: str, write: Callable[[str], None]) -> str:
    """`write(tmp)` writes the whole file at a temporary path beside `path`, which is then
    renamed to `path`; RunFileError naming `path` (nothing left behind) if that fails. A target
    that exists and is not a regular file (`/dev/stdout`, a link to it, a device, a FIFO) is
    written in place: a rename would replace the device with a regular file."""
    if _special(path):
        try:
            write(path)
        except (OSError, sqlite3.Error) as e:
            raise RunFileError(f"cannot write {path} ({_reason(e)}).") from None
        return path
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory")
        os.replace(tmp, path)
    except (OSError, sqlite3.Error) as e:  # SQLite says "database or disk is full" its own way
        raise RunFileError(f"cannot write {path} ({_reason(e)}).") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def _special(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__


def write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_file(path, write)


class Outputs:
    """The files one command writes: all of them, or none (a failed write removes the others)."""

    def __init__(self):
        self.written: list[str] = []

    def write(self, path: str, write: Callable[[str], None]) -> str:
        try:
            self.written.append(write_file(path, write))
        except BaseException:
            self.discard()
            raise
        return path

    def discard(self) -> None:
        for p in self.written:  # only the regular files this command made (never a device)
            if os.path.lexists(p) and stat.S_ISREG(os.lstat(p).st_mode):
                os.unlink(p)
        self.written = []
