"""Check a written capture: the `.xplane.pb` is there and not empty, XProf can read it, and
which engine steps it holds (counted from the step scopes in the trace)."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import os
import shutil
import tempfile

from ..trace import xspace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XProf's converters log every call at INFO


@dataclasses.dataclass
class CaptureCheck:
    run_dir: str
    xplane: str
    bytes: int
    steps: dict[str, list[int]]      # phase -> engine step numbers found in the trace
    session_ns: tuple[int, int] | None
    tools: list[str]                # what XProf offers for it (TensorBoard's tool list)

    @property
    def num_steps(self) -> int:
        return sum(len(v) for v in self.steps.values())

    def record(self) -> dict:
        """What run_info.json keeps of the check."""
        return dict(xplane=os.path.basename(self.xplane), bytes=self.bytes, steps=self.steps,
                    xprof_tools=self.tools, session_ns=self.session_ns)

    def describe(self) -> str:
        parts = [f"{len(v)} {phase} step{'s' if len(v) != 1 else ''} ({_ranges(v)})"
                 for phase, v in self.steps.items() if v]
        found = ", ".join(parts) if parts else "no engine steps"
        return f"{self.bytes / 1e6:.2f} MB, readable by XProf ({len(self.tools)} tools), {found}"


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


def find_xplane(run_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(run_dir, "*.xplane.pb")))
    if not found:
        raise ValueError(f"no .xplane.pb in {run_dir}.")
    return found[0]


@contextlib.contextmanager
def private_copy(path: str):
    """`path` linked (or copied) into a temp dir: XProf writes side files next to its input."""
    with tempfile.TemporaryDirectory(prefix="xprof-") as tmp:
        dst = os.path.join(tmp, os.path.basename(path))
        try:
            os.link(path, dst)
        except OSError:
            shutil.copyfile(path, dst)
        yield dst


def xprof_tool(path: str, tool: str, params: dict | None = None):
    """Run one of XProf's converters on a private copy of the capture; ValueError if it fails."""
    from xprof.convert import raw_to_tool_data
    with private_copy(path) as copy:
        data, _ = raw_to_tool_data.xspace_to_tool_data([copy], tool, params or {})
    if data is None:
        raise ValueError(f"XProf could not read {path} with its {tool} tool.")
    return data


def xprof_tools(path: str) -> list[str]:
    """The tools XProf offers for a capture (empty when it cannot read it)."""
    from xprof.convert import raw_to_tool_data
    with private_copy(path) as copy:
        return list(raw_to_tool_data.xspace_to_tool_names([copy]) or [])


def check_capture(run_dir: str) -> CaptureCheck:
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
    return CaptureCheck(run_dir, path, size, dict(steps), xspace.session_times_ns(space), tools)
