"""The request bodies of `/v1/completions` and `/v1/chat/completions` as JSON Schema, for the
OpenAPI document (`/openapi.json`): what a client may send, and what an API fuzzer reads. The
routes read raw JSON and check it in protocol.py, so these are documentation of those checks."""
from __future__ import annotations

from ..sampling import MAX_LOGPROBS
from .chat import ROLES
from .limits import MAX_STOP, MAX_STOP_CHARS
from .protocol import INT32_MAX, MAX_N

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_COMMON = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": INT32_MAX},
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": -1},   # the vocabulary or more: off
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
    "seed": {"type": "integer"},                   # any size: hashed to 32 bits
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "stop": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
                       {"type": "array", "maxItems": MAX_STOP,
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}}]},
    "stop_token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX}},
    "ignore_eos": {"type": "boolean"},
    "include_stop_str_in_output": {"type": "boolean"},
}
COMPLETION = {
    "type": "object", "required": ["prompt"],
    "properties": {
        **_COMMON,
        "prompt": {"anyOf": [{"type": "string"}, _TOKENS,
                             {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"}, _TOKENS]}}]},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
        "echo": {"type": "boolean"},
    },
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": {
    "type": "object", "required": ["type", "text"],
    "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}}}}]}
CHAT = {
    "type": "object", "required": ["messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": list(ROLES)}, "content": _CONTENT}}},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": INT32_MAX},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
        "add_generation_prompt": {"type": "boolean"},
    },
}


def body(schema: dict) -> dict:
    """FastAPI `openapi_extra` for a route that reads a JSON body of `schema`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
