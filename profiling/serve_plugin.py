"""The profiling plugin of `python -m tpu_engine.serve` (entry point group
`tpu_engine.serve_plugins`): `POST /start_profile` and `POST /stop_profile` capture XLA traces
into VLLM_TORCH_PROFILER_DIR, and SERVICE_PROF_CONFIG_PATH turns on the service profiler."""
from __future__ import annotations

import asyncio
import os
import sys

from .capture import store
from .capture.live import DIR_ENV, LiveCapture, ProfileStateError


def check(args) -> None:
    """Before the model loads: the capture dir is writable and the service config is usable."""
    root = os.environ.get(DIR_ENV, "").strip()
    if root:
        try:
            store.check_writable_dir(root)
        except ValueError as e:
            raise ValueError(f"{DIR_ENV}: {e}") from None
    from .service.install import check_config
    check_config()


def setup(server, args):
    from tpu_engine.serve.api import error_response
    root = os.environ.get(DIR_ENV, "").strip()
    live = LiveCapture(root, server.engine.engine) if root else None
    busy = asyncio.Lock()

    async def in_engine(fn):
        """Run a capture state change between engine steps; (result, None) or (None, error response)."""
        if live is None:
            return None, error_response(f"profiling is not configured: start the server with {DIR_ENV} "
                                        f"set to a directory for the captures.")
        try:
            return await server.engine.call_between_steps(fn), None
        except ProfileStateError as e:
            return None, error_response(str(e), 409)

    async def start_profile():
        async with busy:
            started, error = await in_engine(live.start if live else None)
        return error or started

    async def stop_profile():
        async with busy:
            stopped, error = await in_engine(live.stop if live else None)
            if error:
                return error
            try:
                done = await asyncio.to_thread(live.finish, stopped)
            except ValueError as e:
                return error_response(f"the capture could not be saved: {e}", 500)
        v = done.verification
        print(f"Capture: {done.run_dir}: {v.describe()}", file=sys.stderr, flush=True)
        for problem in done.problems:
            print(f"warning: {problem}", file=sys.stderr, flush=True)
        return {"status": "saved", "run": done.run_dir, "bytes": v.bytes, "steps": v.steps,
                "num_steps": v.num_steps, "duration_s": stopped.closed_at - stopped.opened_at,
                "problems": done.problems}

    server.app.add_api_route("/start_profile", start_profile, methods=["POST"])
    server.app.add_api_route("/stop_profile", stop_profile, methods=["POST"])
    if live:
        print(f"XLA profiling: POST /start_profile and /stop_profile write captures to {live.root}",
              file=sys.stderr)

    from .service.install import install
    close_service = install(server.engine.engine)

    def close():
        if live is not None and live.running:  # a capture left open at shutdown is not lost
            try:
                live.finish(live.stop())
            except ValueError as e:
                print(f"warning: the open capture could not be saved: {e}", file=sys.stderr)
        if close_service:
            close_service()
    return close
