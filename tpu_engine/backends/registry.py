"""The one list of backends. Everything that depends on which backend runs (the runner, its
platform and device count, its compilation-cache dir, the packages whose versions a run records
and which must match, the environment a capture needs, its profiler calls) is read from here.

Adding a backend: a folder beside torch_xla/ and jax/ holding `runner.py` (a base.Runner),
`platform.py` (`platform()`, `device_count()`) and `profiler.py` (the five calls of
torch_xla/profiler.py), plus one entry in BACKENDS. Nothing here imports a backend until it is
asked for: reading this module loads neither torch nor jax.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class EnvDefault:
    """A variable a capture run sets unless the user did, and the note that says so."""
    name: str
    value: str
    note: str


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    package: str                      # its folder: tpu_engine.backends.<package>
    runner: str                       # the runner class in <package>/runner.py
    distributions: tuple[str, str]    # the pair of packages that must be installed and match
    match: str                        # "release": same major.minor (torch and torch_xla); "exact"
    cache_dir_name: str               # ~/.cache/tpu_engine/<name>: each cache format is its own
    capture_env: tuple[EnvDefault, ...] = ()
    no_scopes_why: str = ""           # why a capture of this backend may have no module names

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(f"tpu_engine.backends.{self.package}.{name}")

    def runner_class(self) -> type:
        return getattr(self.module("runner"), self.runner)

    def platform(self) -> str:
        """Start the backend's runtime (if not yet) and name its platform: CPU, TPU or GPU."""
        return self.module("platform").platform()

    def device_count(self) -> int:
        return self.module("platform").device_count()

    def device_memory_bytes(self) -> int | None:
        """One device's memory limit as the runtime reports it (None when it does not)."""
        return self.module("platform").device_memory_bytes()

    def profiler(self) -> ModuleType:
        """Its profiler calls (start_server, Session, request_trace, marker, check_settings)."""
        return self.module("profiler")

    def check_install(self) -> tuple[bool, str]:
        """Whether both packages are installed and match."""
        a, b = self.distributions
        va, vb = version_of(a), version_of(b)
        if va is None or vb is None:
            return False, f"{a} {va or 'missing'}, {b} {vb or 'missing'}: install both (pip install -e .)."
        base_a, base_b = va.split("+")[0], vb.split("+")[0]
        if self.match == "release":
            base_a, base_b = base_a.rsplit(".", 1)[0], base_b.rsplit(".", 1)[0]
        if base_a != base_b:
            return False, f"{a} {va} and {b} {vb} do not match; install the {b} of the same {a} release."
        return True, f"{a} {va} and {b} {vb} match."


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch_xla", "torch_xla", "XlaRunner", ("torch", "torch_xla"), "release", "xla_cache",
            capture_env=(EnvDefault("XLA_HLO_DEBUG", "1",
                                    "XLA_HLO_DEBUG=1 set for this run, so module names reach the capture "
                                    "(XLA_HLO_DEBUG=0 turns it off)."),),
            no_scopes_why="it was made with XLA_HLO_DEBUG unset or 0 (profiling.py sets it to 1 unless "
                          "told otherwise)"),
    # JAX's named scopes reach the HLO metadata with no flag.
    Backend("jax", "jax", "JaxRunner", ("jax", "jaxlib"), "exact", "jax_cache",
            no_scopes_why="its JAX program names no `jax.named_scope`"),
)}
DEFAULT = "torch_xla"


def names() -> list[str]:
    return list(BACKENDS)


def get(name: str) -> Backend:
    """The backend called `name`; ValueError naming the ones there are."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not supported; expected one of {', '.join(BACKENDS)}.")
    return BACKENDS[name]


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, None if it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
