"""The profile dir on disk: TensorBoard's layout `<dir>/plugins/profile/<run>/<host>.xplane.pb`,
a private staging dir where captures are written until they are complete, and finding runs.

A run is moved into `plugins/profile/` with one rename, once verified and recorded, so
TensorBoard (and `summarize`) never see half a run.
"""
from __future__ import annotations

import datetime
import glob
import os
import shutil
import time

from tpu_engine.paths import writable_dir


def check_writable_dir(path: str) -> str:
    """The profile dir, created if needed and proven writable; ValueError naming it otherwise."""
    return writable_dir(path, "profile dir")


def runs_in(logdir: str) -> list[str]:
    """Run directories under `logdir/plugins/profile/` that hold a `.xplane.pb`."""
    return sorted({os.path.dirname(p) for p in
                   glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))})


def find_xplane(run_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(run_dir, "*.xplane.pb")))
    if not found:
        raise ValueError(f"no .xplane.pb in {run_dir}.")
    return found[0]


def resolve_run(path: str) -> tuple[str, str]:
    """(run dir, xplane path) for a run dir, an .xplane.pb file, or a profile dir (its newest
    run). ValueError when nothing readable is there."""
    if os.path.isfile(path):
        if not path.endswith(".xplane.pb"):
            raise ValueError(f"{path} is not an .xplane.pb capture.")
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        raise ValueError(f"{path} does not exist.")
    if glob.glob(os.path.join(path, "*.xplane.pb")):
        return path, find_xplane(path)
    runs = runs_in(path)
    if runs:
        run = max(runs, key=os.path.getmtime)
        if len(runs) > 1:
            print(f"{path} holds {len(runs)} runs; reading the newest, {os.path.basename(run)} "
                  f"(pass a run dir to choose another).")
        return run, find_xplane(run)
    raise ValueError(f"no .xplane.pb capture in {path} (nor in {path}/plugins/profile/<run>/).")


def run_name(kind: str, when: float | None = None) -> str:
    """`<kind>_<local timestamp>`: TensorBoard lists runs by directory name."""
    stamp = datetime.datetime.fromtimestamp(when or time.time()).strftime("%Y_%m_%d_%H_%M_%S")
    return f"{kind}_{stamp}"


class Staging:
    """A private directory under the profile dir where the profiler writes; `publish` moves a
    finished run into `plugins/profile/<name>` with one rename."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, f".staging-{os.getpid()}-{time.time_ns()}")
        os.makedirs(self.path)

    def runs(self) -> list[str]:
        return runs_in(self.path)

    def publish(self, run_dir: str, kind: str) -> str:
        """Move `run_dir` to `plugins/profile/<kind>_<time>` (a suffix if that exists)."""
        dest_root = os.path.join(self.root, "plugins", "profile")
        os.makedirs(dest_root, exist_ok=True)
        name = run_name(kind)
        dest, n = os.path.join(dest_root, name), 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(dest_root, f"{name}_{n}")
        os.rename(run_dir, dest)
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
