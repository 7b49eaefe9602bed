"""Host-memory hygiene shared by every backend."""
from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): loading and compiling
    free a lot of short-lived memory, and the process's peak RSS should show what it keeps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
