"""Turn the service profiler on in this process, as the environment asks:
SERVICE_PROF_CONFIG_PATH (the JSON config; written with defaults if missing) and
PROFILING_SYMBOLS_PATH (the symbol YAML; the packaged default if unset, and copied to that
path if it names a file that does not exist). The engine's batch and KV-cache spans come from
its events (`engine_spans.py`), the rest from the symbols."""
from __future__ import annotations

import os
import shutil
import sys
from typing import Callable

from tpu_engine.serve import threads

from .collector import COLLECTOR
from .config import CONFIG_ENV, ConfigWatcher, ServiceConfig, ensure_config, read_config
from .engine_spans import EngineSpans
from .patching import instrument
from .symbols import DEFAULT_SYMBOLS, SYMBOLS_ENV, load_symbols


def symbols_path(environ=os.environ) -> str:
    path = environ.get(SYMBOLS_ENV, "").strip()
    if not path:
        return DEFAULT_SYMBOLS
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copyfile(DEFAULT_SYMBOLS, path)
        print(f"Service profiler: wrote the default symbols to {path}", file=sys.stderr)
    return path


def apply(config: ServiceConfig) -> None:
    """Put a (checked) config in force. An output_dir that cannot be written is reported and
    changes nothing else: collection goes on where it was, or stays off."""
    COLLECTOR.domains = frozenset(config.domains)
    COLLECTOR.flush_interval_s = config.flush_interval_ms / 1000
    if config.enable:
        before = COLLECTOR.path
        try:
            COLLECTOR.start(config.output_dir)
        except (OSError, ValueError) as e:
            where = f"still collecting into {before}" if COLLECTOR.enabled else "collection stays off"
            print(f"warning: service profiler: output_dir {config.output_dir} cannot be written "
                  f"({getattr(e, 'strerror', None) or e}); {where}.", file=sys.stderr, flush=True)
            return
        print(f"Service profiler: collecting into {COLLECTOR.path}", file=sys.stderr, flush=True)
    elif COLLECTOR.enabled:
        COLLECTOR.stop()
        print("Service profiler: collection stopped", file=sys.stderr, flush=True)
    elif COLLECTOR.output_dir not in (None, os.path.abspath(config.output_dir)):
        # Off: the file in the old directory is finished; the next "enable" opens the new one.
        print(f"Service profiler: output_dir is now {config.output_dir} (used from the next \"enable\": 1)",
              file=sys.stderr, flush=True)


def check_config(environ=os.environ) -> str | None:
    """The config path (the default config written there if missing), None when the service
    profiler is not asked for; ValueError with one sentence if the config is unusable."""
    config_path = environ.get(CONFIG_ENV, "").strip()
    if not config_path:
        return None
    try:
        if ensure_config(config_path):
            print(f"Service profiler: wrote a default config to {config_path} (enable: 0)", file=sys.stderr)
    except OSError as e:
        raise ValueError(f"{CONFIG_ENV}={config_path!r} cannot be written ({e.strerror}).") from None
    read_config(config_path)
    return config_path


def install(engine, environ=os.environ) -> Callable[[], None] | None:
    """Listen to `engine` (an LLMEngine), instrument the symbols and start watching the config;
    returns the function that undoes it all, or None when SERVICE_PROF_CONFIG_PATH is not set.
    ValueError if the config is unusable."""
    config_path = check_config(environ)
    if config_path is None:
        return None
    path = symbols_path(environ)
    symbols, problems = load_symbols(path)
    undo, more = instrument(symbols)
    detach = EngineSpans(COLLECTOR).attach(engine)
    for p in problems + more:
        print(f"warning: service profiler: {p}", file=sys.stderr)
    watcher = ConfigWatcher(config_path, apply)
    threads.watch("service-profiler-config", lambda: watcher.thread)
    threads.watch("service-profiler-writer", lambda: COLLECTOR.writer)
    print(f"Service profiler: {len(undo)} function(s) instrumented from {path}, plus the engine's batch "
          f"and KV-cache events; set \"enable\": 1 in {config_path} to collect", file=sys.stderr, flush=True)

    def close() -> None:
        watcher.stop()
        threads.unwatch("service-profiler-config")
        threads.unwatch("service-profiler-writer")
        COLLECTOR.close()
        detach()
        for u in undo:
            u()
    return close
