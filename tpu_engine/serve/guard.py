"""The outermost layer of the app: a failure on one request is that request's answer and one
line in the log, never a traceback.

Starlette re-raises an exception after its own 500 handler has answered (so that the server
logs the traceback); this middleware catches it first. A client that disconnects mid-request
(starlette's ClientDisconnect while the body is read) gets one line too, and no answer.
"""
from __future__ import annotations

import json
import sys

from starlette.requests import ClientDisconnect


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Guard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        where = f"{scope.get('method')} {scope.get('path')}"
        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            _line(f"note: the client of {where} disconnected before its request was read.")
        except Exception as e:  # noqa: BLE001 -- one request's bug; the server goes on
            _line(f"error: {where} failed ({type(e).__name__}: {str(e)[:200]}).")
            if not started:
                await _answer_500(send, type(e).__name__)


async def _answer_500(send, kind: str) -> None:
    body = json.dumps({"error": {"message": f"the server failed on this request ({kind}).",
                                 "type": "server_error", "code": 500}}).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
