"""The service profiler: spans of a running server's functions and of its engine's events,
switched on and off at run time.

Collecting: config.py (the JSON config and its watcher)  symbols.py (the symbol YAML)  patching.py (instrumenting its functions)
expr.py (attribute expressions)  engine_spans.py (batch and KV-cache spans from engine events)
collector.py (the append-only events file)  install.py (wiring it all into a server)
Reading: events.py (events files -> spans)  tables.py (request, batch, forward, KV-cache tables)
summaries.py  join.py (requests joined to a capture)  trace.py (Chrome trace)  output.py (`service parse`)
"""
