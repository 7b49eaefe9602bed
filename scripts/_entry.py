"""What every script in this folder does: run one command of the installed package.

Python puts this folder first on `sys.path`, where `profiling.py` would hide the `profiling`
package, so the folder is taken off the path before the package is imported. The scripts hold
no code of their own: `pip install -e .` provides everything they run.
"""
import importlib
import os
import sys


def run(module: str, function: str = "cli") -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        command = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        print(f"error: {e.name} is not installed; install the project first: pip install -e .", file=sys.stderr)
        sys.exit(2)
    command()
