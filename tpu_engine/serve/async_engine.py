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
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable

from ..engine import LLMEngine
from ..outputs import RequestOutput, SamplingParams
from .errors import BusyError, RequestError
from .metrics import Finished, ServerMetrics


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an error; the server cannot serve any more."""


class RequestFailedError(RuntimeError):
    """The engine failed while running this request; the engine itself goes on serving."""


@dataclasses.dataclass
class _Failed:
    message: str


@dataclasses.dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    ended_by: str = "abort"   # the finish reason if the server ends it early ("stop": a stop string)
    waiting: bool = True      # counted in AsyncEngine.waiting until its first output (or its end)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._stopping = False
        self.error: BaseException | None = None
        self.metrics: ServerMetrics | None = None   # set by the server; updated by the engine thread
        self._last: dict[str, tuple[float, RequestOutput]] = {}  # engine thread: each request's latest output
        self._in_step: tuple[str, ...] = ()   # engine thread: the requests of the step now running
        self._count_failed = False
        self.failed_steps = 0                 # steps that raised (their requests failed, the engine went on)
        self.last_failure: str | None = None
        self.waiting = 0                      # event loop: submitted requests without a first output yet
        engine.events.subscribe(self._on_phase)

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
    def admit(self, count: int, limit: int) -> None:
        """Refuse `count` more engine requests when they would make more than `limit` wait for a
        slot: 400 if they never could fit, else 503 (retry later)."""
        if count > limit:
            raise RequestError(f"this request makes {count} sequences, more than the waiting queue holds "
                               f"(--max-waiting-queue-length {limit}).")
        if self.waiting + count > limit:
            raise BusyError(f"the server is busy: {self.waiting} sequences wait for a slot and the queue "
                            f"holds {limit} (--max-waiting-queue-length); retry later.")

    def submit(self, jobs: list[tuple[str, list[int], SamplingParams]]) -> None:
        """Queue requests (id, prompt, params) as one message: the engine adds them all before
        its next step, so the samples of one HTTP request are prefilled together. Read each one
        with `outputs`, or `abandon` it."""
        if not self.alive:
            raise EngineDeadError(f"the engine stopped: {self.error!r}")
        loop = asyncio.get_running_loop()
        for request_id, _, _ in jobs:
            self._streams[request_id] = _Stream(loop, asyncio.Queue())
        self.waiting += len(jobs)
        self._inbox.put(("add", jobs))

    def _started(self, stream: _Stream) -> None:
        if stream.waiting:
            stream.waiting = False
            self.waiting -= 1

    async def outputs(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """A submitted request's output after every step that extends it, the last one
        finished. Leaving early (client gone, task cancelled) aborts the request."""
        stream = self._streams[request_id]
        finished = False
        try:
            while not finished:
                out = await stream.queue.get()
                self._started(stream)
                if isinstance(out, ValueError):  # the engine refused the request
                    finished = True
                    raise out
                if isinstance(out, _Failed):  # this request's step raised; others go on
                    finished = True
                    raise RequestFailedError(out.message)
                if isinstance(out, BaseException):
                    raise EngineDeadError(f"the engine stopped: {out!r}") from out
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abandon(request_id)
            self._streams.pop(request_id, None)

    def abandon(self, *request_ids: str) -> None:
        """Abort submitted requests that will not be read to their end (no-op for those gone), in
        one message: a client that leaves with many sequences costs the engine one batch abort."""
        aborts = []
        for request_id in request_ids:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                self._started(stream)
                aborts.append((request_id, stream.ended_by))
        if aborts:
            self._inbox.put(("abort", aborts))

    async def generate(self, request_id: str, prompt: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Add one request and yield its outputs (see `outputs`)."""
        self.submit([(request_id, prompt, params)])
        async for out in self.outputs(request_id):
            yield out

    def end_early(self, request_id: str) -> None:
        """The server ends this request before the engine does (a stop string matched): its
        abort then counts as a finish with reason "stop"."""
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.ended_by = "stop"

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
                    self._step()
        except BaseException as e:  # only a failure outside any request's step gets here
            self.error = e
            for stream in list(self._streams.values()):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, e)
            raise

    def _step(self) -> None:
        """One engine step. If it raises, the requests it was running fail (their readers get
        RequestFailedError) and are dropped from the engine; the thread goes on serving."""
        self._in_step = ()
        try:
            outputs = self.engine.step()
        except Exception as e:
            self._fail_step(e)
            return
        self._publish(outputs)
        if self.metrics:
            self.metrics.steps.inc()

    def _waiting_ids(self) -> list[str]:
        return [r.request_id for r in self.engine.scheduler.waiting]

    def _on_phase(self, e) -> None:
        if e.kind == "begin":
            self._in_step = e.record.request_ids
        elif self.metrics is not None:
            self.metrics.iteration_tokens.observe(e.record.num_tokens)

    def _fail_step(self, error: Exception) -> None:
        # The step's requests, from its begin event; a step that failed before announcing
        # itself took requests from the queue (or the running slots): fail those.
        ids = set(self._in_step)
        if not ids:
            still_waiting = set(self._waiting_ids())
            ids = {rid for rid in list(self.engine._requests) if rid not in still_waiting}
        self.failed_steps += 1
        self.last_failure = f"{type(error).__name__}: {error}"
        print(f"error: engine step {self.engine.step_count} failed ({self.last_failure}); its "
              f"{len(ids)} request(s) fail and the engine goes on.", file=sys.stderr, flush=True)
        message = f"the engine failed while running this request ({self.last_failure})."
        for rid in sorted(ids):
            try:
                self.engine.abort_request(rid)
            except Exception as e:  # the slot is lost; the request is still answered
                print(f"warning: request {rid} could not be freed after the failed step ({e!r}).",
                      file=sys.stderr, flush=True)
            self._last.pop(rid, None)
            stream = self._streams.get(rid)
            if stream is not None:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, _Failed(message))

    def _drain(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            try:
                self._handle(item)
            except Exception as e:  # a bug in one message must not stop the engine thread
                print(f"error: the engine thread could not handle {item[0]!r} ({e!r}); it goes on.",
                      file=sys.stderr, flush=True)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "add":
            for request_id, prompt, params in item[1]:
                stream = self._streams.get(request_id)
                if stream is None:  # abandoned before it arrived
                    continue
                try:
                    self.engine.add_request(request_id, prompt, params)
                except ValueError as e:
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, e)
                except Exception as e:
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, _Failed(
                        f"the engine could not add this request ({type(e).__name__}: {e})."))
        elif kind == "abort":
            live = [(rid, reason) for rid, reason in item[1] if self.engine.has_request(rid)]
            self.engine.abort_request([rid for rid, _ in live])
            for rid, reason in live:
                self._ended(rid, self._last.pop(rid, None), reason)
        elif kind == "call":
            _, fn, future = item
            try:
                result, error = fn(), None
            except Exception as e:
                result, error = None, e
            future.get_loop().call_soon_threadsafe(_settle, future, result, error)

    def _ended(self, request_id: str, last: tuple[float, RequestOutput] | None, reason: str) -> None:
        if self.metrics is None:
            return
        if last is None:  # aborted before its first token
            self.metrics.success[reason].inc()
            return
        out = last[1]
        self.metrics.finished(Finished(out.metrics, len(out.prompt_token_ids), len(out.outputs[0].token_ids),
                                       reason, out.metrics.finished_time or time.time()))

    def _publish(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            try:
                self._count(out)
            except Exception as e:  # metrics are not worth a request: report once, serve on
                if not self._count_failed:
                    print(f"warning: server metrics failed ({e!r}); serving goes on.", file=sys.stderr, flush=True)
                self._count_failed = True
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)

    def _count(self, out: RequestOutput) -> None:
        """The metrics of one step's output (engine thread)."""
        m, now = self.metrics, out.metrics.last_token_time
        if m is None:
            return
        m.generation_tokens.inc()
        if len(out.outputs[0].token_ids) == 1:
            m.first_token(out.metrics, len(out.prompt_token_ids))
        elif out.request_id in self._last:
            m.inter_token(now - self._last[out.request_id][0])
        if out.finished:
            self._last.pop(out.request_id, None)
            self._ended(out.request_id, (now, out), out.outputs[0].finish_reason)
        else:
            self._last[out.request_id] = (now, out)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
