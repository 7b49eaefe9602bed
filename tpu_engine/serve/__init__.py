"""`python -m tpu_engine.serve`: the engine behind an OpenAI-compatible HTTP server.

async_engine.py (the engine thread and continuous batching)  protocol.py (request checks)
api.py (routes)  chat.py (chat templates)  responses.py (completion and chat bodies)
textstream.py (detokenizing, stop strings)  metrics.py (/metrics under vLLM's names)
tokenizer.py  plugins.py (extensions such as profiling)  __main__.py (CLI)
schema.py (request bodies in /openapi.json)  threads.py (background threads shown by /health)
"""
