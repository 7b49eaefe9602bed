"""`python -m tpu_engine.serve`: the engine behind an OpenAI-compatible HTTP server.

async_engine.py (the engine thread and continuous batching)  protocol.py (request checks)
api.py (routes)  tokenizer.py  plugins.py (extensions such as profiling)  __main__.py (CLI)
"""
