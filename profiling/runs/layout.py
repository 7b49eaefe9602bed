"""Where runs live: TensorBoard's layout `<profile dir>/plugins/profile/<run>/<host>.xplane.pb`,
and finding a run from what a user names (a run dir, a capture file, a profile dir, a run's name)."""
from __future__ import annotations

import glob
import os

DEFAULT_PROFILE_DIR = "profiles"   # the capture command's --profile-result-dir default


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
    """(run dir, xplane path) for a run dir, an .xplane.pb file, a profile dir (its newest run),
    or a run's name as `summarize` lists it (`<profile dir>/<name>`, or a bare name in
    ./profiles). ValueError when nothing readable is there."""
    if os.path.isfile(path):
        if not path.endswith(".xplane.pb"):
            raise ValueError(f"{path} is not an .xplane.pb capture.")
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        return _run_by_name(path)
    if glob.glob(os.path.join(path, "*.xplane.pb")):
        return path, find_xplane(path)
    runs = runs_in(path)
    if runs:
        run = max(runs, key=os.path.getmtime)
        if len(runs) > 1:
            names = ", ".join(os.path.basename(r) for r in runs[-6:])
            print(f"{path} holds {len(runs)} runs ({'..., ' if len(runs) > 6 else ''}{names}); reading the "
                  f"newest, {os.path.basename(run)} (pass a run's name or dir to choose another).")
        return run, find_xplane(run)
    raise ValueError(f"no .xplane.pb capture in {path} (nor in {path}/plugins/profile/<run>/).")


def _run_by_name(path: str) -> tuple[str, str]:
    """`profiles/<run name>` or a bare `<run name>` (looked up in ./profiles), as listed by
    `summarize`: the run `<profile dir>/plugins/profile/<run name>`."""
    parent, name = os.path.split(os.path.normpath(path))
    where = os.path.join(parent or DEFAULT_PROFILE_DIR, "plugins", "profile", name)
    if name and os.path.isdir(where):
        return where, find_xplane(where)
    raise ValueError(f"{path} does not exist (as a path, nor as a run named {name!r} in {where}).")
