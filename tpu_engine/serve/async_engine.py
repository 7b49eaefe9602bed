"""The step engine behind an asyncio server: one thread owns the engine and steps it while any
request is unfinished; requests, aborts and control calls reach it through a queue and run
between steps, and each step's outputs go back to the event loop.

Continuous batching comes from the engine itself: a request added while others decode is
prefilled into the next free slot and joins the running decode batch.
"""
from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from typing import Any, AsyncIterator, Callable

from ..engine import LLMEngine
from ..outputs import RequestOutput, SamplingParams


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an error; the server cannot serve any more."""


@dataclasses.dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopping = False
        self.error: BaseException | None = None
        # Totals for /metrics, written by the engine thread only.
        self.counts = {"requests_finished": 0, "requests_aborted": 0, "prompt_tokens": 0,
                       "generation_tokens": 0, "engine_steps": 0}

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    # ---- called from the event loop -----------------------------------------------------------
    async def generate(self, request_id: str, prompt: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its output after every step that extends it, the last one
        finished. Leaving early (client gone, task cancelled) aborts the request."""
        if not self.alive:
            raise EngineDeadError(f"the engine stopped: {self.error!r}")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._inbox.put(("add", request_id, prompt, params))
        finished = False
        try:
            while not finished:
                out = await stream.queue.get()
                if isinstance(out, ValueError):  # the engine refused the request
                    finished = True
                    raise out
                if isinstance(out, BaseException):
                    raise EngineDeadError(f"the engine stopped: {out!r}") from out
                finished = out.finished
                yield out
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._inbox.put(("abort", request_id))

    async def call_between_steps(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the engine thread between two steps; return its result (or raise)."""
        if not self.alive:
            raise EngineDeadError(f"the engine stopped: {self.error!r}")
        future = asyncio.get_running_loop().create_future()
        self._inbox.put(("call", fn, future))
        return await future

    # ---- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        engine = self.engine
        try:
            while not self._stopping:
                # Block only when there is nothing to step.
                self._drain(block=not engine.has_unfinished_requests())
                if engine.has_unfinished_requests():
                    self._publish(engine.step())
                    self.counts["engine_steps"] += 1
        except BaseException as e:  # a broken engine fails every open request, loudly
            self.error = e
            for stream in list(self._streams.values()):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, e)
            raise

    def _drain(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            kind = item[0]
            if kind == "add":
                _, request_id, prompt, params = item
                stream = self._streams.get(request_id)
                if stream is None:  # abandoned before it arrived
                    continue
                try:
                    self.engine.add_request(request_id, prompt, params)
                except ValueError as e:
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, e)
            elif kind == "abort":
                if self.engine.has_request(item[1]):
                    self.counts["requests_aborted"] += 1
                    self.engine.abort_request(item[1])
            elif kind == "call":
                _, fn, future = item
                try:
                    result, error = fn(), None
                except Exception as e:
                    result, error = None, e
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        counts = self.counts
        for out in outputs:
            counts["generation_tokens"] += 1
            if len(out.outputs[0].token_ids) == 1:
                counts["prompt_tokens"] += len(out.prompt_token_ids)
            if out.finished:
                counts["requests_finished"] += 1
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
