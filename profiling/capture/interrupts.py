"""Ctrl-C during a capture run, one behaviour throughout: what is complete and verified is kept,
nothing half-written ever is.

  * The first Ctrl-C stops the profiled passes. The capture in hand (the interrupted pass's
    trace up to that moment, or the env window's trace) is still exported, verified and
    published whole, and its run record says `"interrupted": true`.
  * A Ctrl-C while a capture is being finished (export, verification, publishing) lets that
    capture finish, then stops the run.
  * Another Ctrl-C while a capture is being finished discards it at the next safe point
    (`checkpoint`); captures published before are kept.

`PROFILING_PAUSE_AT=<stage>[,<stage>...]` (warmup, pass, export, verify, publish) makes the run
print one line and wait for a signal at each stage named: the fault tests' way to interrupt it
exactly there.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator

PAUSE_ENV = "PROFILING_PAUSE_AT"
_deferred = 0  # Ctrl-Cs taken by a finishing section's handler (see `pause_point`)


def pause_point(stage: str) -> None:
    """At `stage`, when PROFILING_PAUSE_AT names it: say so and wait for a signal (whose
    handler then runs here: Ctrl-C raises KeyboardInterrupt unless a capture is finishing)."""
    if stage in os.environ.get(PAUSE_ENV, "").replace(" ", "").split(","):
        seen = _deferred  # before saying so: the signal may come at once
        print(f"paused at {stage} ({PAUSE_ENV}); waiting for a signal", file=sys.stderr, flush=True)
        # Not signal.pause(): the signal may reach another thread, and Python runs its handler
        # in the main thread only between bytecodes, so poll until a handler has run.
        while _deferred == seen:
            time.sleep(0.05)  # KeyboardInterrupt leaves from here under the default handler


def from_interrupt(e: BaseException) -> bool:
    """`e` is a KeyboardInterrupt, or an error raised while handling one: torch's dynamo turns a
    Ctrl-C during a compilation into an UnboundLocalError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__context__
    return False


class Interrupts:
    """How many Ctrl-Cs a run has had, and the finishing sections that defer them."""

    def __init__(self):
        self.count = 0
        self.passes_cut = False  # the first Ctrl-C landed in a profiled pass

    @property
    def stopped(self) -> bool:
        """The run was interrupted: no further pass starts."""
        return self.count > 0

    @property
    def abandoned(self) -> bool:
        """Ctrl-C came again while a capture was being finished: discard it."""
        return self.count > 1

    def passes_interrupted(self, what: str) -> None:
        """The first Ctrl-C landed in the passes (KeyboardInterrupt caught there)."""
        self.count += 1
        self.passes_cut = True
        print(f"interrupted: the profiled passes stop here; saving {what} (Ctrl-C again to discard it)...",
              file=sys.stderr, flush=True)

    def checkpoint(self, stage: str) -> None:
        """A safe point of finishing a capture: KeyboardInterrupt here if it is to be discarded."""
        pause_point(stage)
        if self.abandoned:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def finishing(self, what: str) -> Iterator[None]:
        """Run the block (finishing `what`) with Ctrl-C deferred to `checkpoint`s."""
        def on_sigint(signum, frame):
            global _deferred
            _deferred += 1
            self.count += 1
            if self.count == 1:
                print(f"interrupted: finishing {what} first, then stopping (Ctrl-C again to discard it)...",
                      file=sys.stderr, flush=True)
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
