"""The service profiler: spans of a running server's functions, switched on and off at run time.

config.py (the JSON config and its watcher)  symbols.py (the symbol YAML, patching)
expr.py (attribute expressions)  collector.py (the append-only events file)
install.py (wiring it into a server)  parse.py (events -> tables, SQLite, CSVs)  trace.py (Chrome trace)
"""
