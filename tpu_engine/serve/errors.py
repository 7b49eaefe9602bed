"""The one error type of a refused request: a plain sentence and the HTTP status to answer with.
Its own module so that every part of request parsing (protocol.py, chat.py) can raise it."""
from __future__ import annotations


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
