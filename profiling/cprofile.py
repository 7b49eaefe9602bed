"""cProfile for a piece of Python: a decorator and a context manager. With a file name the
stats are saved there (open with `snakeviz FILE` or `python -m pstats FILE`); without one they
are printed, sorted by cumulative time.

    @cprofile("expensive.prof")
    def expensive(): ...

    with cprofile_context():
        another()
"""
from __future__ import annotations

import contextlib
import cProfile
import functools
import os
import pstats
import sys


def _finish(profiler: cProfile.Profile, save_file: str | None, top: int) -> None:
    if save_file:
        directory = os.path.dirname(os.path.abspath(save_file))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{save_file}.tmp-{os.getpid()}"
        profiler.dump_stats(tmp)
        os.replace(tmp, save_file)  # a reader never sees half a file
    else:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(top)


@contextlib.contextmanager
def cprofile_context(save_file: str | None = None, top: int = 30):
    """Profile the block; also when it raises (the stats up to the error are kept)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield profiler
    finally:
        profiler.disable()
        _finish(profiler, save_file, top)


def cprofile(save_file: str | None = None, enabled: bool = True, top: int = 30):
    """Decorator: profile every call of the function (each call overwrites `save_file`)."""
    def decorate(fn):
        if not enabled:
            return fn

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with cprofile_context(save_file, top):
                return fn(*args, **kwargs)
        return wrapper
    return decorate
