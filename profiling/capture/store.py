"""The profile dir as the capture side writes it: a private staging dir where captures are
written until they are complete, and run names (finding runs is `runs/layout.py`).

A run is moved into `plugins/profile/` with one rename, once verified and recorded, so
TensorBoard (and `summarize`) never see half a run. Run names begin with the time
(`2026_11_30_09_50_12_decode`, torch_xla's and vLLM's stamp), because XProf lists runs by name:
the last one listed is then the newest. The capture file is always `<hostname>.xplane.pb`.
"""
from __future__ import annotations

import datetime
import glob
import os
import shutil
import socket
import stat
import time

from tpu_engine.paths import writable_dir

from ..runs.layout import find_xplane, runs_in

STAMP = "%Y_%m_%d_%H_%M_%S"
STAMP_LEN = len("2026_11_30_09_50_12")


def check_writable_dir(path: str) -> str:
    """The profile dir, created if needed and proven writable; ValueError naming it otherwise."""
    return writable_dir(path, "profile dir")


def check_creatable_dir(path: str, what: str) -> str:
    """`path` made absolute if it is, or can later be created as, a writable directory; nothing
    is created (a probe file proves its nearest existing parent writable). ValueError naming it."""
    path = existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{what} {path!r} cannot be created: {existing!r} is not a directory.")
    if existing == path:
        return writable_dir(path, what)
    try:
        writable_dir(existing, what)
    except ValueError:
        raise ValueError(f"{what} {path!r} cannot be created: {existing!r} is not writable.") from None
    return path


def capture_file_name() -> str:
    """`<hostname>.xplane.pb`, what an in-process trace is exported as; a detached trace
    (which the profiler client names `localhost_<port>.xplane.pb`) is renamed to match."""
    return f"{socket.gethostname()}.xplane.pb"


def name_capture(run_dir: str) -> str:
    """Rename the run's one `.xplane.pb` to `capture_file_name()`; its path. Several (one per
    host of a multi-host trace) are already named by host and stay as they are."""
    found = glob.glob(os.path.join(run_dir, "*.xplane.pb"))
    want = os.path.join(run_dir, capture_file_name())
    if len(found) == 1 and found[0] != want:
        os.rename(found[0], want)
        return want
    return find_xplane(run_dir)


def run_name(kind: str, when: float | None = None) -> str:
    """`<local time>_<kind>`: XProf lists runs by name, so names must sort in time order."""
    stamp = datetime.datetime.fromtimestamp(time.time() if when is None else when).strftime(STAMP)
    return f"{stamp}_{kind}"


def free_run_name(dest_root: str, kind: str, when: float | None = None) -> str:
    """`run_name` at the first second from `when` on that no run in `dest_root` has taken: a
    counter suffix would sort `_10` before `_2`, and a second run in the same second would sort
    by kind rather than time."""
    taken = {n[:STAMP_LEN] for n in os.listdir(dest_root)} if os.path.isdir(dest_root) else set()
    t = int(time.time() if when is None else when)
    while run_name(kind, t)[:STAMP_LEN] in taken:
        t += 1
    return run_name(kind, t)


STAGING_PREFIX = ".staging-"


def _process_alive_since(pid: int, made_s: float) -> bool:
    """Whether process `pid` runs and began before `made_s` (so it may own a staging dir made
    then: a pid reused by a later process does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:  # Linux: start time in clock ticks after boot (field 22 of /proc/<pid>/stat)
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return boot + ticks / os.sysconf("SC_CLK_TCK") <= made_s + 1


def real_dir_inside(path: str, root: str) -> bool:
    """`path` is a directory itself (not a link to one) and lies inside `root`: settling
    staging moves what it holds, so a link to a folder elsewhere must never be followed."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def staging_entries(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(stale, skipped) under `root`: (path, pid) of each staging dir whose process is gone
    (killed before it could publish or clean up; a live run's staging is left alone), and the
    paths named like staging that are not real directories inside `root` (a symlink), which
    are never touched."""
    stale, skipped = [], []
    for path in sorted(glob.glob(os.path.join(root, STAGING_PREFIX + "*"))):
        try:
            pid, ns = (int(x) for x in os.path.basename(path)[len(STAGING_PREFIX):].split("-"))
        except ValueError:
            continue  # not one of ours
        if not real_dir_inside(path, root):
            skipped.append(path)
        elif not _process_alive_since(pid, ns / 1e9):
            stale.append((path, pid))
    return stale, skipped


class Staging:
    """A private directory under the profile dir where the profiler writes; `publish` moves a
    finished run into `plugins/profile/<name>` with one rename."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, f"{STAGING_PREFIX}{os.getpid()}-{time.time_ns()}")
        os.makedirs(self.path)

    def runs(self) -> list[str]:
        return runs_in(self.path)

    def publish(self, run_dir: str, kind: str) -> str:
        """Move `run_dir` to `plugins/profile/<time>_<kind>` (`free_run_name`). A profile dir
        removed meanwhile is not made again (OSError)."""
        if not os.path.isdir(self.root) or not os.path.isdir(run_dir):
            raise FileNotFoundError(2, "the profile dir or its staging was removed", self.root)
        dest_root = os.path.join(self.root, "plugins", "profile")
        os.makedirs(dest_root, exist_ok=True)
        dest = os.path.join(dest_root, free_run_name(dest_root, kind))
        os.rename(run_dir, dest)
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
