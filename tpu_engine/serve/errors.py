"""The one error type of a refused request: a plain sentence and the HTTP status to answer with.
Its own module so that every part of request parsing (protocol.py, chat.py) can raise it."""
from __future__ import annotations


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BusyError(RequestError):
    """The server is full for now (its waiting queue): 503 with Retry-After, as servers answer."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, 503)
        self.retry_after_s = retry_after_s
