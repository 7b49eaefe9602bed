"""The parts of a run record that the capture side decides and the analysis side reads back:
the window asked for, the machine's peaks, the workload, and what verifying the capture found.
Each is a frozen dataclass with `to_json`/`from_json`."""
from __future__ import annotations

import dataclasses
from typing import Any

from tpu_engine.events import PHASES, StepRecord

from ..table import number_ranges


@dataclasses.dataclass(frozen=True)
class Window:
    """The capture window asked for: kind "env", "phase" or "server"."""
    kind: str
    delay_ms: int = 0
    duration_ms: int = 0
    phase: str = "all"
    max_steps: int | None = None
    min_batch: int = 1
    min_kv_len: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Window":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @property
    def per_pass(self) -> bool:
        """Phase windows capture each profiled pass apart; the env window spans them all."""
        return self.kind == "phase"

    @property
    def offline(self) -> bool:
        """Made by an offline run's passes (env or phase), not a server's /start_profile."""
        return self.kind != "server"

    def run_label(self, phases: str) -> str:
        """What its runs are named after (with the time first): the phase a phase window takes,
        else the phases the capture holds (`prefill-decode`), `serve-` first for a server's."""
        if self.kind == "phase":
            return self.phase
        return f"serve-{phases}" if self.kind == "server" else phases

    def matches(self, r: StepRecord) -> bool:
        """Whether a step belongs in a phase window."""
        if self.phase != "all" and r.phase != self.phase:
            return False
        if r.phase == "decode":
            return r.batch_size >= self.min_batch and r.kv_len_max >= self.min_kv_len
        return True

    def describe(self) -> str:
        if self.kind == "env":
            return f"env window, delay {self.delay_ms} ms, duration {self.duration_ms} ms"
        if self.kind == "server":
            return "from /start_profile to /stop_profile"
        extra = []
        if self.max_steps:
            extra.append(f"first {self.max_steps} step(s)")
        if self.min_batch > 1:
            extra.append(f"batch >= {self.min_batch}")
        if self.min_kv_len:
            extra.append(f"KV length >= {self.min_kv_len}")
        return f"{self.phase} steps" + (f" ({', '.join(extra)})" if extra else "")


@dataclasses.dataclass(frozen=True)
class Peaks:
    """The machine's peaks for the roofline, recorded with each capture."""
    flops_per_s: float | None     # None: not known
    bytes_per_s: float | None
    source: str                   # where the figures come from, or why there are none

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Peaks":
        return cls(data.get("flops_per_s"), data.get("bytes_per_s"), str(data.get("source", "unknown")))


@dataclasses.dataclass(frozen=True)
class Workload:
    """A run's schedule as recorded: each request's output length and the decode batch sizes
    that follow from it."""
    mode: str
    output_lengths: list[int]
    expected_decode_batches: list[int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Workload":
        return cls(str(data["mode"]), list(data["output_lengths"]), list(data["expected_decode_batches"]))

    def describe(self) -> str:
        if len(set(self.output_lengths)) == 1:
            return f"{self.output_lengths[0]} output tokens each"
        return "decode batches " + ", ".join(map(str, self.expected_decode_batches))


@dataclasses.dataclass(frozen=True)
class Verification:
    """What checking a written capture found (kept in its run record)."""
    xplane: str                      # file name, in the run dir
    bytes: int
    steps: dict[str, list[int]]      # phase -> engine step numbers found in the trace
    xprof_tools: list[str]           # what XProf offers for it (TensorBoard's tool list)
    session_ns: tuple[int, int] | None

    @property
    def num_steps(self) -> int:
        return sum(len(v) for v in self.steps.values())

    @property
    def step_numbers(self) -> list[int]:
        return sorted(n for v in self.steps.values() for n in v)

    def phases(self) -> str:
        """`prefill-decode`, `decode`, ... (what the capture holds), or `idle`."""
        return "-".join(p for p in PHASES if self.steps.get(p)) or "idle"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Verification":
        session = data.get("session_ns")
        return cls(str(data.get("xplane", "")), int(data.get("bytes", 0)),
                   {str(k): list(v) for k, v in (data.get("steps") or {}).items()},
                   list(data.get("xprof_tools") or []), tuple(session) if session else None)

    def describe(self) -> str:
        parts = [f"{len(v)} {phase} step{'s' if len(v) != 1 else ''} (steps {number_ranges(v)})"
                 for phase, v in self.steps.items() if v]
        found = ", ".join(parts) if parts else "no engine steps"
        return f"{self.bytes / 1e6:.2f} MB, readable by XProf ({len(self.xprof_tools)} tools), {found}"
