"""What sits beside each capture, typed: `manifest.jsonl` (one `StepRecord` per captured engine
step) and `run_info.json` (a `RunRecord`: command, environment, versions, engine and model,
peaks, window, workload, latencies, compiles, capture timing, verification). The capture side
writes them (`capture/record.py` fills a record from a running engine); the analysis reads them
back through `read_manifest` and `read_run_record`."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Any, TypeVar

from tpu_engine.backends import registry
from tpu_engine.backends.registry import version_of
from tpu_engine.compile import CompileStats
from tpu_engine.config import ModelConfig
from tpu_engine.events import StepRecord
from tpu_engine.info import EngineInfo

from . import files as runfiles
from .parts import Peaks, Verification, Window, Workload

MANIFEST = "manifest.jsonl"
RUN_INFO = "run_info.json"
ENV_KEYS = ("VLLM_TPU_PROFILE_DELAY_MS", "VLLM_TPU_PROFILE_DURATION_MS", "XLA_HLO_DEBUG",
            "XLA_IR_DEBUG", "PJRT_DEVICE", "CPU_NUM_DEVICES", "XLA_FLAGS", "LIBTPU_INIT_ARGS",
            "PT_XLA_DEBUG_LEVEL", "XLA_USE_SPMD", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR",
            "TPU_PROFILER_HOST_TRACER_LEVEL", "TPU_PROFILER_PYTHON_TRACER_LEVEL")


@dataclasses.dataclass(frozen=True)
class Compiles:
    """XLA compilations during warm-up, and during the profiled passes (or a server capture's
    window): there should be none after warm-up."""
    warmup: CompileStats | None = None
    profiled: CompileStats | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Compiles":
        profiled = data.get("profiled", data.get("profiled_passes"))  # the older name
        return cls(_optional(CompileStats, data.get("warmup")), _optional(CompileStats, profiled))


@dataclasses.dataclass(frozen=True)
class Latencies:
    """Seconds per pass of the offline run: unprofiled warm-up passes, then profiled ones."""
    warmup: list[float]
    profiled: list[float]

    @property
    def warmup_mean(self) -> float | None:
        return sum(self.warmup) / len(self.warmup) if self.warmup else None

    @property
    def profiled_mean(self) -> float | None:
        return sum(self.profiled) / len(self.profiled) if self.profiled else None

    def to_json(self) -> dict[str, Any]:
        return dict(warmup=self.warmup, profiled=self.profiled, warmup_mean=self.warmup_mean,
                    profiled_mean=self.profiled_mean)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Latencies":
        return cls(list(data.get("warmup") or []), list(data.get("profiled") or []))


@dataclasses.dataclass(frozen=True)
class CaptureTiming:
    """When the trace ran and how long it took to reach the disk (wall-clock seconds)."""
    opened_at: float | None = None        # the trace began (env window: the window opened)
    closed_at: float | None = None
    written_after_s: float | None = None  # the window's end to the verified capture on disk
    requested_at: float | None = None     # env window: the trace was asked for
    passes_wall: tuple[float, float] | None = None  # env window: the profiled passes ran
    pass_index: int | None = None         # phase window: which profiled pass
    window_steps: list[int] | None = None  # phase window: the steps it ran

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CaptureTiming":
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        if values["passes_wall"]:
            values["passes_wall"] = tuple(values["passes_wall"])
        return cls(**values)


@dataclasses.dataclass
class RunRecord:
    """`run_info.json`: everything about a capture that the trace itself does not say."""
    command: list[str]
    env: dict[str, str]
    versions: dict[str, str | None]
    engine: EngineInfo | None
    model_config: ModelConfig | None
    peaks: Peaks | None
    window: Window | None
    compiles: Compiles
    capture: CaptureTiming
    args: dict[str, Any] | None = None   # the capture command's flags, as given
    workload: Workload | None = None
    latency_s: Latencies | None = None
    interrupted: bool = False
    verification: Verification | None = None
    backend: str = registry.DEFAULT      # the engine's (tpu_engine/backends/registry.py)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, ModelConfig) else (
                value.to_json() if hasattr(value, "to_json") else value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunRecord":
        """A record as written by `to_json` (or by an earlier version: missing parts are None)."""
        return cls(command=list(data.get("command") or []), env=dict(data.get("env") or {}),
                   versions=dict(data.get("versions") or {}),
                   engine=_optional(EngineInfo, data.get("engine")),
                   model_config=_optional(ModelConfig, data.get("model_config"), "from_dict"),
                   peaks=_optional(Peaks, data.get("peaks")), window=_optional(Window, data.get("window")),
                   compiles=Compiles.from_json(data.get("compiles") or {}),
                   capture=CaptureTiming.from_json(data.get("capture") or {}), args=data.get("args"),
                   workload=_optional(Workload, data.get("workload")),
                   latency_s=_optional(Latencies, data.get("latency_s")),
                   interrupted=bool(data.get("interrupted", False)),
                   verification=_optional(Verification, data.get("verification")),
                   backend=str(data.get("backend") or registry.DEFAULT))  # records before JAX: torch_xla


T = TypeVar("T")


def _optional(cls: type[T], data, method: str = "from_json") -> T | None:
    return None if data is None else getattr(cls, method)(data)


# ---- files (through `runs/files.py`: errors name the file and line) ----------------------
def write_manifest(run_dir: str, steps: list[StepRecord]) -> str:
    text = "".join(json.dumps(s.to_json()) + "\n" for s in steps)
    return runfiles.write_text(os.path.join(run_dir, MANIFEST), text)


def read_manifest(run_dir: str) -> list[StepRecord]:
    """The run's step records ([] when it has no manifest); RunFileError (a ValueError) naming
    the file and line of a line that is not a step record."""
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.lexists(path):
        return []
    # A manifest's steps have ended: their end time is known.
    return [runfiles.build(runfiles.where(path, n), runfiles.parse_json(line, runfiles.where(path, n)),
                           StepRecord, StepRecord.from_json, required=("wall_end",))
            for n, line in runfiles.json_lines(path)]


def write_run_record(run_dir: str, record: RunRecord) -> str:
    text = json.dumps(record.to_json(), indent=2, default=str) + "\n"
    return runfiles.write_text(os.path.join(run_dir, RUN_INFO), text)


def read_run_record(run_dir: str) -> RunRecord | None:
    """The run's record, None when it has none (a capture made elsewhere); RunFileError naming
    the file (and the field) when it is not one."""
    path = os.path.join(run_dir, RUN_INFO)
    if not os.path.lexists(path):
        return None
    return runfiles.build(path, runfiles.read_json(path), RunRecord, RunRecord.from_json)


# ---- this process ------------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    """Python, every backend's packages (the registry's), libtpu, XProf and this project."""
    backends = {dist: version_of(dist) for b in registry.BACKENDS.values() for dist in b.distributions}
    return {"python": platform.python_version(), **backends,
            "libtpu": version_of("libtpu") or version_of("libtpu-nightly"),
            "xprof": version_of("xprof"), "tpu_inference_profiler": version_of("tpu-inference-profiler"),
            "platform": platform.platform()}


def environment() -> dict[str, str]:
    return {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
