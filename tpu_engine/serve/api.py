"""The OpenAI-compatible HTTP API (FastAPI): `/v1/completions`, `/v1/chat/completions`,
`/v1/models`, `/metrics`, `/health`.

Prompts are token ids, or text when the model has a tokenizer; responses carry `token_ids`
beside `text` (as vLLM's `return_token_ids` does) and `usage`. Each prompt's `n` samples are
engine requests of their own (`<request id>-<choice index>`), prefilled together in one packed
step when they fit. Bad requests get a 400 with one sentence; nothing a client sends can stop
the server.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..outputs import RequestOutput
from . import schema
from .async_engine import AsyncEngine, EngineDeadError, RequestFailedError
from .errors import BusyError, RequestError
from .guard import Guard
from .limits import Limits, parse_body, read_body
from .metrics import ServerMetrics
from .protocol import CompletionRequest, parse_chat, parse_completion
from .responses import ChatFormat, Choice, CompletionFormat, Delta, usage
from .security import ApiKey, admin_check
from .textstream import TextStream
from .threads import states as thread_states
from .tokenize_routes import add_token_routes


def error_response(message: str, status: int = 400, headers: dict | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
            409: "conflict_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def refusal(e: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after_s)} if isinstance(e, BusyError) else None
    return error_response(str(e), e.status, headers)


class OpenAIServer:
    """Holds the engine and builds the app. Plugins (see `plugins.py`) may add routes to `app`."""

    def __init__(self, engine: AsyncEngine, model_name: str | list[str], tokenizer=None,
                 limits: Limits = Limits(), api_keys: list[str] = (), host: str = "127.0.0.1"):
        self.limits, self.host = limits, host
        self.model_names = [model_name] if isinstance(model_name, str) else list(model_name)
        self.engine, self.model_name, self.tokenizer = engine, self.model_names[0], tokenizer
        self.created = int(time.time())
        engine.metrics = self.metrics = ServerMetrics(engine.engine, self.model_name, engine.engine.max_model_len)
        self.app = FastAPI(title="tpu_engine OpenAI-compatible server")
        self.app.add_exception_handler(StarletteHTTPException, self._http_error)
        self.app.add_api_route("/health", self.health, methods=["GET"])
        self.app.add_api_route("/v1/models", self.models, methods=["GET"])
        self.app.add_api_route("/metrics", self.metrics_text, methods=["GET"])
        self.app.add_api_route("/v1/completions", self.completions, methods=["POST"],
                               openapi_extra=schema.body(schema.COMPLETION))
        self.app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"],
                               openapi_extra=schema.body(schema.CHAT))
        add_token_routes(self)
        if api_keys:
            self.app.add_middleware(ApiKey, keys=list(api_keys))
        self.app.add_middleware(Guard)  # outermost: failures are one answer and one log line

    def add_admin_route(self, path: str, endpoint, methods=("POST",)) -> None:
        """A route that acts on the server itself (profiling): same-origin requests only."""
        async def checked(request: Request):
            refused = admin_check(request.headers, self.host)
            if refused:
                return error_response(refused, 403)
            return await endpoint()
        checked.__name__ = getattr(endpoint, "__name__", "admin")
        self.app.add_api_route(path, checked, methods=list(methods))

    @staticmethod
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """Unknown routes and wrong methods in the same error shape as everything else."""
        message = {404: f"there is no route {request.url.path}.",
                   405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
        return error_response(message, exc.status_code)

    async def health(self):
        """200 while the engine serves; the body says how every background thread is and how
        many engine steps failed (each failing only its own requests)."""
        if not self.engine.alive:
            return error_response(f"the engine stopped: {self.engine.error!r}", 503)
        threads = {"engine": "alive", **thread_states()}
        ok = all(state != "stopped" for state in threads.values())
        return {"status": "ok" if ok else "degraded", "threads": threads,
                "failed_steps": self.engine.failed_steps, "last_failure": self.engine.last_failure}

    async def models(self):
        engine = self.engine.engine
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                            "owned_by": "tpu_engine", "root": engine.config.model,
                                            "max_model_len": engine.max_model_len,
                                            "vocab_size": engine.model_config.vocab_size}
                                           for name in self.model_names]}

    async def metrics_text(self):
        """Prometheus text under vLLM's metric names (metrics.py)."""
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def completions(self, request: Request):
        return await self._serve(request, lambda body: parse_completion(body, self.model_names, self.tokenizer),
                                 CompletionFormat)

    async def chat_completions(self, request: Request):
        limit = self.engine.engine.max_model_len
        return await self._serve(request, lambda body: parse_chat(body, self.model_names, self.tokenizer, limit),
                                 ChatFormat)

    def _parse(self, data: bytes, parse) -> CompletionRequest:
        """Body bytes to a checked request (JSON, fields, tokenizing, engine limits): CPU work,
        run in a worker thread so that the event loop stays free."""
        req = parse(parse_body(data))
        for prompt in req.prompts:
            self.engine.engine.validate(prompt, req.params)
        return req

    async def _serve(self, request: Request, parse, format_cls):
        """Read, parse and check the request within the limits (off the event loop), then answer
        it streamed or whole."""
        try:
            data = await read_body(request, self.limits.max_body_bytes)
            req = await asyncio.to_thread(self._parse, data, parse)
            self.engine.admit(len(req.prompts) * req.n, self.limits.max_waiting)
        except RequestError as e:
            return refusal(e)
        except ValueError as e:
            return error_response(str(e))
        fmt = format_cls(req, self.tokenizer, self._text)
        request_id = f"{fmt.id_prefix}-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(self._stream(request_id, req, fmt), media_type="text/event-stream")
        choices: dict[int, Choice] = {}

        async def collect():
            async for d in self.run_request(request_id, req):
                choices.setdefault(d.index, Choice(d.index, d.prompt_index)).add(d)
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
        except (EngineDeadError, RequestFailedError) as e:
            return error_response(str(e), 500)
        except ValueError as e:
            return error_response(str(e))
        ordered = [choices[k] for k in sorted(choices)]
        return {"id": request_id, "object": fmt.object, "created": int(time.time()), "model": req.model,
                "choices": [fmt.choice(c) for c in ordered],
                "usage": self._usage(req, {c.index: c for c in ordered})}

    async def run_request(self, request_id: str, req: CompletionRequest) -> AsyncIterator[Delta]:
        """Every sample of every prompt as its own engine request (`<request_id>-<choice index>`);
        yields each choice's `Delta`s as the engine produces them. A choice whose text meets a
        stop string ends there, and its engine request is aborted."""
        jobs = [(i, j) for i in range(len(req.prompts)) for j in range(req.n)]
        texts = [TextStream(self.tokenizer, req.stop, req.include_stop, req.params.stop_token_ids) for _ in jobs]
        sent = [0] * len(jobs)
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(k: int):
            try:
                async for out in self.engine.outputs(f"{request_id}-{k}"):
                    await merged.put((k, out))
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                await merged.put((k, e))
                raise

        self.engine.submit([(f"{request_id}-{k}", req.prompts[i], req.sample_params(j))
                            for k, (i, j) in enumerate(jobs)])
        tasks = [asyncio.create_task(pump(k)) for k in range(len(jobs))]
        try:
            remaining = len(jobs)
            while remaining:
                k, out = await merged.get()
                if isinstance(out, BaseException):
                    raise out
                if tasks[k].cancelled() or sent[k] < 0:
                    continue  # a choice already ended by a stop string
                delta = self._delta(k, jobs[k][0], out, texts[k], sent[k])
                if texts[k].stopped is not None and not out.finished:  # a stop string: end it here
                    self.engine.end_early(f"{request_id}-{k}")
                    tasks[k].cancel()
                sent[k] = -1 if delta.finish_reason else sent[k] + len(delta.token_ids)
                remaining -= delta.finish_reason is not None
                if delta.token_ids or delta.finish_reason:
                    yield delta
        finally:
            for t in tasks:
                t.cancel()
            # every sequence still running or waiting (a client that left), in one abort
            self.engine.abandon(*(f"{request_id}-{k}" for k in range(len(jobs))))

    @staticmethod
    def _delta(k: int, i: int, out: RequestOutput, text: TextStream, sent: int) -> Delta:
        completion = out.outputs[0]
        piece = text.add(completion.token_ids, out.finished)
        end = text.num_tokens
        finish, stop = (completion.finish_reason, None) if out.finished else (None, None)
        if text.stopped is not None:
            finish, stop = "stop", text.stopped.reason
        logprobs = completion.logprobs[sent:end] if completion.logprobs is not None else []
        return Delta(k, i, completion.token_ids[sent:end], logprobs, piece, finish, stop,
                     out.prompt_logprobs if sent == 0 else None)

    async def _stream(self, request_id: str, req: CompletionRequest, fmt: CompletionFormat):
        created, started, tokens = int(time.time()), set(), 0
        try:
            async for d in self.run_request(request_id, req):
                tokens += len(d.token_ids)
                for choice in fmt.chunk_choices(d, d.index not in started):
                    yield _sse({"id": request_id, "object": fmt.chunk_object, "created": created,
                                "model": req.model, "choices": [choice]})
                started.add(d.index)
            if req.include_usage:
                yield _sse({"id": request_id, "object": fmt.chunk_object, "created": created,
                            "model": req.model, "choices": [], "usage": usage(req, tokens)})
        except (EngineDeadError, RequestFailedError, ValueError) as e:
            yield _sse({"error": {"message": str(e), "type": "server_error", "code": 500}})
        yield "data: [DONE]\n\n"

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer else ""

    @staticmethod
    def _usage(req: CompletionRequest, final: dict[int, Choice]) -> dict:
        return usage(req, sum(len(c.token_ids) for c in final.values()))


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
