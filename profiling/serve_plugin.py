"""The profiling plugin of `python -m tpu_engine.serve` (entry point group
`tpu_engine.serve_plugins`): `POST /start_profile` and `POST /stop_profile` capture XLA traces
into VLLM_TORCH_PROFILER_DIR, SERVICE_PROF_CONFIG_PATH turns on the service profiler, and
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT sends request spans over OTLP (`service/otlp.py`)."""
from __future__ import annotations

import os
import sys

from .capture import store
from .capture.live import DIR_ENV, CaptureLimits, LiveCapture
from .capture.profilers import profiler_for
from .serve_routes import ProfileRoutes


def check(args) -> None:
    """Before the model loads, every path the plugin will write: the capture dir, and with the
    service profiler its config, the config's output_dir and a symbols file still to be copied
    there. ValueError (exit 2) with one sentence naming the path."""
    root = os.environ.get(DIR_ENV, "").strip()
    if root:
        try:
            store.check_writable_dir(root)
        except ValueError as e:
            raise ValueError(f"{DIR_ENV}: {e}") from None
        CaptureLimits.from_env()        # every capture setting, checked now, not at /start_profile
        profiler_for(args.backend)
    _check_otlp()
    from .service.config import read_config
    from .service.install import check_config
    from .service.patching import check_names
    from .service.symbols import DEFAULT_SYMBOLS, SYMBOLS_ENV, load_symbols
    config_path = check_config()
    if config_path is None:
        return
    store.check_creatable_dir(read_config(config_path).output_dir,
                              f"the service profiler's output_dir (set in {config_path})")
    symbols = os.environ.get(SYMBOLS_ENV, "").strip()
    if symbols and not os.path.exists(symbols):  # the default symbols get copied there
        store.check_creatable_dir(os.path.dirname(os.path.abspath(symbols)), f"the directory of {SYMBOLS_ENV}")
    check_names(load_symbols(symbols if symbols and os.path.exists(symbols) else DEFAULT_SYMBOLS)[0])


def _check_otlp() -> None:
    from .service.otlp import endpoint
    endpoint()


def setup(server, args):
    root = os.environ.get(DIR_ENV, "").strip()
    live = LiveCapture(root, server.engine.engine, CaptureLimits.from_env()) if root else None
    routes = ProfileRoutes(server, live)
    if live:
        print(f"XLA profiling: POST /start_profile and /stop_profile write captures to {live.root} "
              f"(a capture stops by itself after {live.limits.max_steps} steps or {live.limits.max_seconds} s)",
              file=sys.stderr)

    return _shutdown_hook(live, routes, _start_service_profiler(server.engine.engine), _start_otlp(server.engine.engine))


def _start_otlp(engine):
    """The OTLP request spans' close function, or None when no endpoint is set."""
    from .service import otlp
    url = otlp.endpoint()
    if url is None:
        return None
    close = otlp.install(engine, url)
    print(f"OpenTelemetry: request spans go to {url} (OTLP/HTTP)", file=sys.stderr)
    return close


def _start_service_profiler(engine):
    """The service profiler's close function, or None when it could not start (said once): the
    capture's shutdown hook stays whatever happens here. A ValueError (a bad setting) stops the
    server before the model serves."""
    from .service.install import install
    try:
        return install(engine)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- the service profiler is off
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        print(f"warning: the service profiler could not start and is off: {e}{where}", file=sys.stderr)
        return None


def _shutdown_hook(live, routes, close_service, close_otlp=None):
    def close():
        try:
            routes.wait_saved()  # a capture a limit stopped is still being saved
            if live is not None and live.running:  # a capture left open at shutdown is not lost
                try:
                    done = live.finish(live.stop())
                    print(f"Capture (open at shutdown): {done.run_dir}: {done.verification.describe()}",
                          file=sys.stderr, flush=True)
                except Exception as e:  # noqa: BLE001 -- say it; the service profiler still closes
                    print(f"warning: the capture open at shutdown could not be saved: {e}", file=sys.stderr)
        finally:
            for closer in (close_service, close_otlp):
                if closer:
                    closer()
    return close
