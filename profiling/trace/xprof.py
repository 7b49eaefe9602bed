"""XProf's own converters over a capture (the tools TensorBoard's profile plugin shows): the
independent reading that verification and the tests check ours against."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XProf's converters log every call at INFO


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
