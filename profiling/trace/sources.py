"""An op's line of model code, from the Python stack its capture records (JAX's stack frames
in the HLO, or `source_stack` in a trace JSON): the innermost frame that is not the
framework's own code (JAX, Flax, NumPy, torch, torchax, the standard library), so that a
model shipped in a library (tunix, vLLM) is named by its model file."""
from __future__ import annotations

import re

_FRAMEWORK = re.compile(r"/(jax|jaxlib|flax|numpy|torch|torchax|optax|equinox|typing_extensions)/"
                        r"|/lib/python3\.\d+/[^/]+\.py$")


def label(path: str, line: int) -> str:
    return f"{path.rsplit('/', 1)[-1]}:{line}"


def model_frame(frames: list[tuple[str, int]]) -> str:
    """`qwen2.py:228` for the innermost frame (frames: innermost first) outside the
    framework, else the innermost; '' for no frames."""
    if not frames:
        return ""
    path, line = next((f for f in frames if not _FRAMEWORK.search(f[0])), frames[0])
    return label(path, line)
