"""The OpenAI-compatible HTTP API (FastAPI): `/v1/completions`, `/v1/models`, `/health`.

Prompts are token ids, or text when the model has a tokenizer; responses carry `token_ids`
beside `text` (as vLLM's `return_token_ids` does) and `usage`. Bad requests get a 400 with one
sentence; nothing a client sends can stop the server.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..outputs import RequestOutput
from .async_engine import AsyncEngine, EngineDeadError
from .protocol import CompletionRequest, RequestError, parse_completion


def error_response(message: str, status: int = 400) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class OpenAIServer:
    """Holds the engine and builds the app. Plugins (see `plugins.py`) may add routes to `app`."""

    def __init__(self, engine: AsyncEngine, model_name: str, tokenizer=None):
        self.engine, self.model_name, self.tokenizer = engine, model_name, tokenizer
        self.created = int(time.time())
        self.app = FastAPI(title="tpu_engine OpenAI-compatible server")
        self.app.add_exception_handler(StarletteHTTPException, self._http_error)
        self.app.add_api_route("/health", self.health, methods=["GET"])
        self.app.add_api_route("/v1/models", self.models, methods=["GET"])
        self.app.add_api_route("/metrics", self.metrics, methods=["GET"])
        self.app.add_api_route("/v1/completions", self.completions, methods=["POST"])

    @staticmethod
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """Unknown routes and wrong methods in the same error shape as everything else."""
        message = {404: f"there is no route {request.url.path}.",
                   405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
        return error_response(message, exc.status_code)

    async def health(self):
        if not self.engine.alive:
            return error_response(f"the engine stopped: {self.engine.error!r}", 503)
        return {"status": "ok"}

    async def models(self):
        return {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                            "created": self.created, "owned_by": "tpu_engine",
                                            "max_model_len": self.engine.engine.max_model_len,
                                            "vocab_size": self.engine.engine.model_config.vocab_size}]}

    async def metrics(self):
        """Prometheus text: requests running and waiting now, and totals since start."""
        engine, lines = self.engine.engine, []
        gauges = {"num_requests_running": engine.num_running(), "num_requests_waiting": engine.num_waiting()}
        for name, value in gauges.items():
            lines += [f"# TYPE tpu_engine:{name} gauge", f"tpu_engine:{name} {value}"]
        for name, value in self.engine.counts.items():
            lines += [f"# TYPE tpu_engine:{name}_total counter", f"tpu_engine:{name}_total {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def completions(self, request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(f"the request body is not valid JSON ({e}).")
        except RecursionError:
            return error_response("the request body is nested too deeply.")
        try:
            req = parse_completion(body, self.model_name, self.tokenizer)
            for prompt in req.prompts:
                self.engine.engine.validate(prompt, req.params)
        except RequestError as e:
            return error_response(str(e), e.status)
        except ValueError as e:
            return error_response(str(e))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(self._stream(request_id, req), media_type="text/event-stream")
        final: dict[int, RequestOutput] = {}

        async def collect():
            async for i, out in self.run_request(request_id, req):
                final[i] = out
        work = asyncio.create_task(collect())
        watch = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is shutting down
            work.cancel()
            raise
        finally:
            watch.cancel()
        if not work.done():  # the client left: cancelling the work aborts its engine requests
            work.cancel()
            return error_response("the client disconnected.", 499)
        try:
            work.result()
        except EngineDeadError as e:
            return error_response(str(e), 500)
        except ValueError as e:
            return error_response(str(e))
        choices = [self._choice(i, req, final[i].outputs[0].token_ids, final[i], 0)
                   for i in range(len(req.prompts))]
        return {"id": request_id, "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "usage": self._usage(req, final)}

    async def run_request(self, request_id: str, req: CompletionRequest) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every prompt of the request as its own engine request; yields (prompt index, output)
        as the engine produces them."""
        if len(req.prompts) == 1:
            async for out in self.engine.generate(f"{request_id}-0", req.prompts[0], req.params):
                yield 0, out
            return
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, prompt: list[int]):
            try:
                async for out in self.engine.generate(f"{request_id}-{i}", prompt, req.params):
                    await merged.put((i, out))
            except BaseException as e:
                await merged.put((i, e))
                raise

        tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(req.prompts)]
        try:
            remaining = len(tasks)
            while remaining:
                i, out = await merged.get()
                if isinstance(out, BaseException):
                    raise out
                remaining -= out.finished
                yield i, out
        finally:
            for t in tasks:
                t.cancel()

    async def _stream(self, request_id: str, req: CompletionRequest):
        sent = [0] * len(req.prompts)
        texts = [_TextStream(self.tokenizer) for _ in req.prompts]
        final: dict[int, RequestOutput] = {}
        created = int(time.time())
        try:
            async for i, out in self.run_request(request_id, req):
                ids = out.outputs[0].token_ids
                choice = self._choice(i, req, ids[sent[i]:], out, sent[i], texts[i].add(ids, out.finished))
                sent[i] = len(ids)
                if out.finished:
                    final[i] = out
                yield _sse({"id": request_id, "object": "text_completion", "created": created,
                            "model": self.model_name, "choices": [choice]})
            if req.include_usage:
                yield _sse({"id": request_id, "object": "text_completion", "created": created,
                            "model": self.model_name, "choices": [], "usage": self._usage(req, final)})
        except (EngineDeadError, ValueError) as e:
            yield _sse({"error": {"message": str(e), "type": "server_error", "code": 500}})
        yield "data: [DONE]\n\n"

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer else ""

    def _choice(self, i: int, req: CompletionRequest, new_ids: list[int], out: RequestOutput, offset: int,
                text: str | None = None) -> dict:
        """The choice for prompt `i` holding `new_ids` (tokens from position `offset` on) and
        `text` (default: those tokens decoded)."""
        completion = out.outputs[0]
        text = self._text(new_ids) if text is None else text
        if offset == 0 and req.echo:
            text = (req.texts[i] if req.texts[i] is not None else self._text(req.prompts[i])) + text
        choice: dict[str, Any] = {"index": i, "text": text, "token_ids": list(new_ids), "logprobs": None,
                                  "finish_reason": completion.finish_reason if out.finished else None}
        if req.params.logprobs is not None:
            choice["logprobs"] = self._logprobs(new_ids, completion.logprobs[offset:offset + len(new_ids)])
        return choice

    def _logprobs(self, ids: list[int], entries: list[dict]) -> dict:
        name = self.tokenizer.token_text if self.tokenizer else str
        return {"tokens": [name(t) for t in ids],
                "token_logprobs": [e[t].logprob for t, e in zip(ids, entries)],
                "top_logprobs": [{name(k): v.logprob for k, v in e.items()} for e in entries],
                "text_offset": None}

    @staticmethod
    def _usage(req: CompletionRequest, final: dict[int, RequestOutput]) -> dict:
        prompt = sum(len(p) for p in req.prompts)
        completion = sum(len(o.outputs[0].token_ids) for o in final.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _TextStream:
    """Streamed text that joins up to the whole output's text: each chunk is the new end of the
    decoded output, held back while it ends in a partial character (U+FFFD)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.sent = tokenizer, ""

    def add(self, ids: list[int], finished: bool) -> str:
        if self.tokenizer is None:
            return ""
        full = self.tokenizer.decode(ids)
        if (full.endswith("\ufffd") and not finished) or not full.startswith(self.sent):
            return ""
        new, self.sent = full[len(self.sent):], full
        return new


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
