"""The service profiler: spans of a running server's functions and of its engine's events,
switched on and off at run time.

Collecting: config.py (the JSON config and its watcher)  symbols.py (the symbol YAML, patching)
expr.py (attribute expressions)  engine_spans.py (batch and KV-cache spans from engine events)
collector.py (the append-only events file)  install.py (wiring it all into a server)
Reading: events.py (events files -> spans)  tables.py (request, batch, forward, KV-cache tables
and summaries)  trace.py (Chrome trace)  output.py (`service parse`: writes them all)
"""
