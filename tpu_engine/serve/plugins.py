"""Server plugins: packages extend the server without the server knowing them.

A plugin is an entry point in the group `tpu_engine.serve_plugins` naming a module with
  check(args)          optional; called before the model loads: raise ValueError on bad settings
  setup(server, args)  called once before the server listens: may add routes to `server.app`;
                       may return a callable to run at shutdown.
A ValueError is a configuration error that stops the server (exit status 2); any other failure
disables that plugin only, with a warning.
"""
from __future__ import annotations

import importlib.metadata
import sys

GROUP = "tpu_engine.serve_plugins"


def _warn(name: str, e: Exception) -> None:
    print(f"warning: server plugin {name!r} failed and is disabled: {e!r}", file=sys.stderr)


def check_plugins(args) -> list:
    """Import every installed plugin and run its `check`; returns the usable ones."""
    plugins = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            plugin = ep.load()
            if hasattr(plugin, "check"):
                plugin.check(args)
        except ValueError:
            raise
        except Exception as e:
            _warn(ep.name, e)
            continue
        plugins.append((ep.name, plugin))
    return plugins


def setup_plugins(plugins: list, server, args) -> list:
    """Run each plugin's `setup`; returns their shutdown callables."""
    closers = []
    for name, plugin in plugins:
        try:
            closer = plugin.setup(server, args)
        except ValueError:
            raise
        except Exception as e:
            _warn(name, e)
            continue
        if callable(closer):
            closers.append(closer)
    return closers
