"""Server plugins: packages extend the server without the server knowing them.

A plugin is an entry point in the group `tpu_engine.serve_plugins` naming a function
`setup(server, args)`, called once before the server starts listening: it may add routes to
`server.app`, read `args`, and return a callable run at shutdown. A ValueError from a plugin is a
configuration error that stops the server; any other failure disables that plugin only.
"""
from __future__ import annotations

import importlib.metadata
import sys
import traceback

GROUP = "tpu_engine.serve_plugins"


def load_plugins(server, args) -> list:
    """Run every installed plugin's setup; returns their shutdown callables."""
    closers = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            closer = ep.load()(server, args)
        except ValueError:
            raise
        except Exception as e:
            print(f"warning: server plugin {ep.name!r} ({ep.value}) failed and is disabled: {e!r}",
                  file=sys.stderr)
            traceback.print_exc(limit=3, file=sys.stderr)
            continue
        if callable(closer):
            closers.append(closer)
    return closers
