"""The server's profiling routes, `POST /start_profile` and `POST /stop_profile`, over a
LiveCapture: same-origin requests only (the server's admin routes), answers that name runs by
their place in the profile dir (never an absolute path), and an open capture bounded in steps
and time. A capture that reaches its limit is stopped and saved at once; the next
/stop_profile answers with it.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading

from .capture.live import DIR_ENV, LiveCapture, ProfileStateError, Stopped
from .capture.publish import CaptureWriteError, Published


class ProfileRoutes:
    def __init__(self, server, live: LiveCapture | None):
        from tpu_engine.serve.api import error_response
        self.server, self.live, self.error = server, live, error_response
        self.busy = asyncio.Lock()
        self._auto = None                   # the answer for a capture a limit stopped
        self._saving: threading.Thread | None = None   # saving that capture
        if live is not None:
            live.on_limit = self._finish_in_background
        server.add_admin_route("/start_profile", self.start)
        server.add_admin_route("/stop_profile", self.stop)

    def _unconfigured(self):
        return self.error(f"profiling is not configured: start the server with {DIR_ENV} set to a "
                          f"directory for the captures.")

    async def _between_steps(self, fn):
        try:
            return await self.server.engine.call_between_steps(fn), None
        except ProfileStateError as e:
            return None, self.error(str(e), 409)

    async def start(self):
        if self.live is None:
            return self._unconfigured()
        async with self.busy:
            refused = self._unwritable()
            if refused:
                return refused
            await self._limit_answer()     # a new capture: the old limit's answer is stale
            started, error = await self._between_steps(self.live.start)
        if error is None:
            asyncio.get_running_loop().create_task(self._watch_time())
        return error or started

    async def _watch_time(self) -> None:
        """The time limit holds while no step runs too (an idle server)."""
        await asyncio.sleep(self.live.limits.max_seconds)
        try:
            await self.server.engine.call_between_steps(self.live.stop_at_limit)
        except Exception as e:  # noqa: BLE001 -- the engine stopped: the shutdown hook saves it
            print(f"warning: the capture's time limit could not be applied ({e!r}).", file=sys.stderr)

    async def stop(self):
        if self.live is None:
            return self._unconfigured()
        async with self.busy:
            auto = None if self.live.running else await self._limit_answer()
            if auto is not None:
                return auto
            stopped, error = await self._between_steps(self.live.stop)
            if error:  # (a limit may have stopped it just now)
                return await self._limit_answer() or error
            return await asyncio.to_thread(self._finish, stopped)

    def _finish_in_background(self, stopped: Stopped) -> None:
        """A limit stopped the capture on the engine thread: save it off that thread."""
        def work():
            self._auto = self._finish(stopped)
        self._saving = threading.Thread(target=work, name="capture-at-limit", daemon=True)
        self._saving.start()

    def wait_saved(self) -> None:
        if self._saving is not None:
            self._saving.join()

    async def _limit_answer(self):
        """The answer of the capture a limit stopped (once it is saved), or None; taken once."""
        saving, self._saving = self._saving, None
        if saving is not None:
            await asyncio.to_thread(saving.join)
        answer, self._auto = self._auto, None
        return answer

    def _unwritable(self):
        if not os.access(self.live.root, os.W_OK | os.X_OK):
            return self.error(f"the profile dir ({DIR_ENV}) cannot be written now, so a capture could "
                              f"not be saved.", 507)
        return None

    def _finish(self, stopped: Stopped):
        """Export, verify and publish; the answer (a dict, or an error response)."""
        try:
            done = self.live.finish(stopped)
        except CaptureWriteError as e:  # a full disk, a read-only or removed profile dir
            return self._failed(str(e).rstrip("."), 507)
        except ValueError as e:
            return self._failed(str(e).rstrip("."), 500)
        return self._saved(done, stopped)

    def _failed(self, why: str, status: int):
        why = why.replace(self.live.root, DIR_ENV)   # no absolute paths in answers
        print(f"warning: the capture could not be saved: {why}.", file=sys.stderr, flush=True)
        return self.error(f"the capture could not be saved ({why}).", status)

    def _saved(self, done: Published, stopped: Stopped) -> dict:
        v = done.verification
        print(f"Capture: {done.run_dir}: {v.describe()}", file=sys.stderr, flush=True)
        for problem in done.problems:
            print(f"warning: {problem}", file=sys.stderr, flush=True)
        return {"status": "saved", "run": os.path.relpath(done.run_dir, self.live.root), "bytes": v.bytes,
                "steps": v.steps, "num_steps": v.num_steps, "duration_s": stopped.window.closed_at - stopped.window.opened_at,
                "stopped_by": f"limit: {stopped.stopped_by}" if stopped.stopped_by else "request",
                "problems": [p.replace(self.live.root, DIR_ENV) for p in done.problems]}
