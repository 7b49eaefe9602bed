"""Directories the engine and its tools write into (compilation caches, profiles, exports)."""
from __future__ import annotations

import os


def writable_dir(path: str, what: str) -> str:
    """`path` made absolute, created if missing, and proven writable by writing a file there
    (permission bits alone say nothing for root or a read-only mount); ValueError naming `what`
    and the path otherwise."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} exists and is not a directory.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path!r} cannot be created ({e.strerror}).") from None
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{what} {path!r} is not writable ({e.strerror}).") from None
    return path
