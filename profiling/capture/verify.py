"""Check a written capture: the `.xplane.pb` is there and not empty, XProf can read it, and
which engine steps it holds (counted from the step scopes in the trace)."""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

from tpu_engine.events import PHASES

from ..trace import xspace
from ..trace.xprof import xprof_tools
from .store import find_xplane


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
        parts = [f"{len(v)} {phase} step{'s' if len(v) != 1 else ''} ({_ranges(v)})"
                 for phase, v in self.steps.items() if v]
        found = ", ".join(parts) if parts else "no engine steps"
        return f"{self.bytes / 1e6:.2f} MB, readable by XProf ({len(self.xprof_tools)} tools), {found}"


def _ranges(nums: list[int]) -> str:
    out, nums = [], sorted(nums)
    start = prev = nums[0]
    for n in nums[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return "steps " + ", ".join(out)


def check_capture(run_dir: str) -> Verification:
    """Verify one run directory; ValueError with a plain sentence when it is not usable.
    XProf must read it and offer its trace viewer (what TensorBoard opens); the step scopes
    are counted from the capture itself."""
    path = find_xplane(run_dir)
    size = os.path.getsize(path)
    space = xspace.load(path)  # raises on empty / unparsable
    tools = xprof_tools(path)
    if not any(t.startswith("trace_viewer") for t in tools):
        raise ValueError(f"XProf cannot open {path} in its trace viewer (tools offered: {tools or 'none'}).")
    steps: dict[str, list[int]] = collections.defaultdict(list)
    for s in xspace.step_scopes(space):
        steps[s.phase].append(s.step)
    return Verification(os.path.basename(path), size, dict(steps), tools, xspace.session_times_ns(space))
