"""`python -m profiling doctor`: is this machine ready to capture and view XLA profiles?

Each check prints one line, `ok` or `FAIL` with what to do; the exit code is 1 if any failed.
"""
from __future__ import annotations

import glob
import importlib.metadata
import os

from tpu_engine.backends import registry
from tpu_engine.backends.registry import version_of
from tpu_engine.cli import PROFILER_PORT, check_profiler_port


def check_versions(backend: str = registry.DEFAULT) -> tuple[bool, str]:
    """The backend's packages are installed and match (torch and torch_xla, jax and jaxlib)."""
    return registry.get(backend).check_install()


def check_profile_plugin() -> tuple[bool, str]:
    """Installed exactly once: two copies (say, in user and system site-packages) confuse
    TensorBoard's plugin loading."""
    found = sorted(d.version for d in importlib.metadata.distributions()
                   if (d.metadata["Name"] or "").lower().replace("_", "-") == "tensorboard-plugin-profile")
    if not found:
        return False, "tensorboard-plugin-profile is not installed: pip install tensorboard-plugin-profile."
    if len(found) > 1:
        return False, f"tensorboard-plugin-profile is installed {len(found)} times ({', '.join(found)}); uninstall all but one."
    tb = version_of("tensorboard")
    if tb is None:
        return False, "tensorboard is not installed: pip install tensorboard."
    return True, f"tensorboard {tb} with tensorboard-plugin-profile {found[0]}, installed once."


def check_port(port: int) -> tuple[bool, str]:
    try:
        check_profiler_port(port)
    except ValueError as e:
        return False, str(e)
    return True, f"profiler port {port} is free."


def check_profile_dir(path: str) -> tuple[bool, str]:
    """The dir is (or can be made) writable, and every run in it has the layout TensorBoard reads."""
    if not os.path.exists(path):
        ancestor = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
            return False, f"profile dir {path} cannot be created: {ancestor} is not a writable directory."
        return True, f"profile dir {path} does not exist yet; it will be created."
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        return False, f"profile dir {path} is not a writable directory."
    stray = sorted(glob.glob(os.path.join(path, "*.xplane.pb")) + glob.glob(os.path.join(path, "*", "*.xplane.pb")))
    if stray:
        return False, (f"{stray[0]} is not under {path}/plugins/profile/<run>/, where TensorBoard looks; "
                       f"move it there.")
    runs = [r for r in glob.glob(os.path.join(path, "plugins", "profile", "*")) if os.path.isdir(r)]
    empty = [r for r in runs if not glob.glob(os.path.join(r, "*.xplane.pb"))]
    if empty:
        return False, f"run {empty[0]} has no .xplane.pb; TensorBoard will list it with no tools."
    return True, f"profile dir {path}: writable, {len(runs)} run(s) in plugins/profile/."


def check_staging(path: str) -> tuple[bool, str]:
    """Staging dirs left by killed capture runs: a verified capture in one is published, anything
    else removed (what the next capture run would do), and the line says which."""
    if not os.path.isdir(path):
        return True, "no stale staging dirs."
    from .capture.publish import settle_stale_staging
    done = settle_stale_staging(path)
    return True, " ".join(done) if done else "no stale staging dirs."


def check_server_plugin() -> tuple[bool, str]:
    """The server finds /start_profile, /stop_profile and the service profiler through this
    entry point, which only an installed package (pip install -e .) provides."""
    from tpu_engine.serve.plugins import GROUP
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}
    if names.get("profiling") != "profiling.serve_plugin":
        return False, (f"the server's profiling plugin is not registered (entry points {GROUP}: "
                       f"{names or 'none'}); install the project with pip install -e .")
    return True, "the server's profiling plugin is registered (/start_profile, /stop_profile, service profiler)."


def run(port: int = PROFILER_PORT, profile_dir: str = "profiles", backend: str = registry.DEFAULT) -> int:
    checks = [("versions", check_versions(backend)), ("profile plugin", check_profile_plugin()),
              ("server plugin", check_server_plugin()),
              ("port", check_port(port)), ("staging", check_staging(profile_dir)),
              ("profile dir", check_profile_dir(profile_dir))]
    for name, (ok, msg) in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {name:15} {msg}")
    return 0 if all(ok for _, (ok, _) in checks) else 1
