"""The structure the code promises: dependencies point one way (`scripts` -> `profiling` ->
`tpu_engine`), the scripts hold no code, and reading a capture never loads torch."""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

from tests.captures import ROOT, profiling_env


def _imports(path: str) -> set[str]:
    """Top-level packages a module imports (absolute imports; relative ones stay inside)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_engine_never_imports_profiling():
    files = glob.glob(os.path.join(ROOT, "tpu_engine", "**", "*.py"), recursive=True)
    assert files
    offenders = [f for f in files if "profiling" in _imports(f)]
    assert offenders == []


def test_scripts_are_calls_into_the_package():
    """Each script is a docstring, `from _entry import run` and one `run("profiling....")`."""
    scripts = [p for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")) if not p.endswith("_entry.py")]
    assert len(scripts) == 8
    for path in scripts:
        with open(path) as f:
            body = ast.parse(f.read()).body
        assert len(body) == 3 and isinstance(body[0], ast.Expr), path
        assert ast.unparse(body[1]) == "from _entry import run", path
        call = body[2].value
        assert call.func.id == "run" and call.args[0].value.startswith("profiling."), path


def test_reading_a_capture_never_loads_torch(all_capture, tmp_path):
    """summarize with every export, in a fresh interpreter: no torch, no torch_xla."""
    code = "\n".join([
        "import sys",
        "from profiling.cli import main",
        f"main(['summarize', {all_capture.run!r}, '--json', {str(tmp_path / 'a.json')!r},",
        f"      '--chrome-trace', {str(tmp_path / 't.json')!r}, '--csv', {str(tmp_path / 'c')!r}])",
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_xla', 'jax'))",
        "print('HEAVY', heavy)"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=profiling_env(),
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"
