"""Where runs live: TensorBoard's layout `<profile dir>/plugins/profile/<run>/<host>.xplane.pb`
(or the TPU profiler's `<host>.trace.json.gz`),
and finding a run from what a user names (a run dir, a capture file, a profile dir, a run's name)."""
from __future__ import annotations

import glob
import os

DEFAULT_PROFILE_DIR = "profiles"   # the capture command's --profile-result-dir default


CAPTURES = (".xplane.pb", ".trace.json.gz", ".trace.json")  # what summarize reads, best first


def is_capture(path: str) -> bool:
    return path.endswith(CAPTURES)


def _captures_in(run_dir: str) -> list[str]:
    return [p for ext in CAPTURES for p in sorted(glob.glob(os.path.join(run_dir, "*" + ext)))]


def runs_in(logdir: str) -> list[str]:
    """Run directories under `logdir/plugins/profile/` that hold a capture."""
    return sorted({os.path.dirname(p) for ext in CAPTURES for p in
                   glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*" + ext))})


def find_xplane(run_dir: str) -> str:
    """The run's capture: its `.xplane.pb`, else its Chrome-trace JSON."""
    found = _captures_in(run_dir)
    if not found:
        raise ValueError(f"no .xplane.pb (nor .trace.json.gz) capture in {run_dir}.")
    return found[0]


def resolve_run(path: str) -> tuple[str, str]:
    """(run dir, xplane path) for a run dir, an .xplane.pb file, a profile dir (its newest run),
    or a run's name as `summarize` lists it (`<profile dir>/<name>`, or a bare name in
    ./profiles). ValueError when nothing readable is there."""
    if os.path.isfile(path):
        if not is_capture(path):
            raise ValueError(f"{path} is not a capture (an .xplane.pb, .trace.json or .trace.json.gz).")
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        return _run_by_name(path)
    if _captures_in(path):
        return path, find_xplane(path)
    runs = runs_in(path)
    if runs:
        run = max(runs, key=os.path.getmtime)
        if len(runs) > 1:
            names = ", ".join(os.path.basename(r) for r in runs[-6:])
            print(f"{path} holds {len(runs)} runs ({'..., ' if len(runs) > 6 else ''}{names}); reading the "
                  f"newest, {os.path.basename(run)} (pass a run's name or dir to choose another).")
        return run, find_xplane(run)
    raise ValueError(f"no capture (.xplane.pb, .trace.json.gz) in {path} (nor in {path}/plugins/profile/<run>/).")


def _run_by_name(path: str) -> tuple[str, str]:
    """`profiles/<run name>` or a bare `<run name>` (looked up in ./profiles), as listed by
    `summarize`: the run `<profile dir>/plugins/profile/<run name>`."""
    parent, name = os.path.split(os.path.normpath(path))
    where = os.path.join(parent or DEFAULT_PROFILE_DIR, "plugins", "profile", name)
    if name and os.path.isdir(where):
        return where, find_xplane(where)
    raise ValueError(f"{path} does not exist (as a path, nor as a run named {name!r} in {where}).")
