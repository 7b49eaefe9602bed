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


def _package_edges(top: str) -> dict[str, set[str]]:
    """Which of `top`'s subpackages (and top-level modules) import which others."""
    edges: dict[str, set[str]] = {}
    root = os.path.join(ROOT, top)
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, root).split(os.sep)
        src = rel[0].removesuffix(".py")
        module = [top] + [p.removesuffix(".py") for p in rel]
        if rel[-1] == "__init__.py":
            module = module[:-1] + ["__init__"]
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = module[:-node.level] if node.level else []
                full = base + (node.module.split(".") if node.module else [])
                targets = [full + [a.name] for a in node.names] if not node.module else [full]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            for t in targets:
                if len(t) > 1 and t[0] == top and t[1] != src and t[1] != "__init__":
                    edges.setdefault(src, set()).add(t[1])
    return edges


def test_no_package_cycles_in_profiling():
    """capture, analysis, trace, export, runs, service, ...: dependencies form no cycle (the run
    files' schema and the Table type sit where both sides can import them)."""
    edges = _package_edges("profiling")
    assert edges.get("runs") and "capture" in edges  # the scan sees the imports
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2
    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_engine_api_and_protocol_load_neither_torch_nor_jax():
    """The engine, its scheduler, the server's request checks and the backend registry are
    backend-neutral: the backend is imported only when a runner is built."""
    code = ("import sys\nimport tpu_engine.engine, tpu_engine.scheduler, tpu_engine.serve.protocol, "
            "tpu_engine.backends.registry, tpu_engine.llm\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torch_xla', 'jax', 'jaxlib')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_backend_names_come_only_from_the_registry():
    """No module but the registry spells a backend's name: choices, defaults, versions and
    branches all read it, so a new backend is one folder and one registry entry."""
    from tpu_engine.backends import registry
    names = set(registry.names())
    offenders = []
    for top in ("tpu_engine", "profiling"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True):
            if path.endswith(os.path.join("backends", "registry.py")):
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            offenders += [f"{os.path.relpath(path, ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                          if isinstance(n, ast.Constant) and n.value in names]
    assert offenders == []
    for b in registry.BACKENDS.values():  # each entry is a folder with the three modules
        folder = os.path.join(ROOT, "tpu_engine", "backends", b.package)
        assert {"runner.py", "platform.py", "profiler.py"} <= set(os.listdir(folder)), b.name
        with open(os.path.join(folder, "runner.py")) as f:
            classes = {n.name: n for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.ClassDef)}
        assert [ast.unparse(base) for base in classes[b.runner].bases] == ["Runner"], b.name
