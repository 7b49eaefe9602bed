"""vLLM's utility routes: `GET /version`, `POST /tokenize` and `POST /detokenize`, with vLLM's
bodies.

  /tokenize    {"prompt": str, "add_special_tokens": true} or {"messages": [...],
               "add_generation_prompt": true, "add_special_tokens": false}, either with
               "return_token_strs" -> {"count", "max_model_len", "tokens", "token_strs"}
               (messages are rendered as /v1/chat/completions renders them, so the count is the
               prompt that route would run)
  /detokenize  {"tokens": [ids]} -> {"prompt": str}
Both read their body within the server's limits and tokenize off the event loop.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from .. import __version__
from .chat import render_chat
from .errors import RequestError
from .limits import check_text, parse_body, read_body
from .protocol import check_model, show


def add_token_routes(server) -> None:
    async def version():
        return {"version": __version__}

    async def tokenize(request: Request):
        return await _answer(server, request, _tokenize)

    async def detokenize(request: Request):
        return await _answer(server, request, _detokenize)

    server.app.add_api_route("/version", version, methods=["GET"])
    server.app.add_api_route("/tokenize", tokenize, methods=["POST"])
    server.app.add_api_route("/detokenize", detokenize, methods=["POST"])


async def _answer(server, request: Request, work):
    from .api import refusal
    try:
        data = await read_body(request, server.limits.max_body_bytes)
        return await asyncio.to_thread(lambda: work(server, _body(server, data)))
    except RequestError as e:
        return refusal(e)


def _body(server, data: bytes) -> dict:
    body = parse_body(data)
    check_model(body, server.model_names)
    if server.tokenizer is None:
        raise RequestError("this model has no tokenizer (no tokenizer.json), so there is nothing to "
                           "tokenize with.")
    return body


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, not {show(value)}.")
    return value


def _tokenize(server, body: dict) -> dict[str, Any]:
    tok = server.tokenizer
    if "messages" in body:
        text, special = render_chat(body["messages"], tok, _flag(body, "add_generation_prompt", True))
        ids = tok.encode(check_text(text, "the messages"), add_special_tokens=special or
                         _flag(body, "add_special_tokens", False))
    elif isinstance(body.get("prompt"), str):
        ids = tok.encode(check_text(body["prompt"], "the prompt"),
                         add_special_tokens=_flag(body, "add_special_tokens", True))
    else:
        raise RequestError("the request needs 'prompt' (a string) or 'messages'.")
    strs = [tok.token_text(t) for t in ids] if _flag(body, "return_token_strs", False) else None
    return {"count": len(ids), "max_model_len": server.engine.engine.max_model_len, "tokens": ids,
            "token_strs": strs}


def _detokenize(server, body: dict) -> dict[str, str]:
    ids = body.get("tokens")
    vocab = server.engine.engine.model_config.vocab_size
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise RequestError(f"tokens must be a list of token ids, not {show(ids)}.")
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError(f"token id {show(bad)} is outside the vocabulary [0, {vocab}).")
    return {"prompt": server.tokenizer.decode(ids)}
