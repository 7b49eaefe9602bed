"""What one request may carry, so that no request can stall or starve the others.

Every bound is checked before any work is queued, and each is a 400 with one sentence naming it:
  * the body: at most `max_body_bytes` (`--max-request-bytes`), read in chunks, and JSON nested
    at most MAX_DEPTH levels (deeper input is refused before anything walks it recursively);
  * stop strings: at most MAX_STOP strings of at most MAX_STOP_CHARS characters (they are
    matched against the text after every token);
  * engine requests: prompts x n at most MAX_CHOICES per HTTP request;
  * text: a prompt or message must be valid Unicode (a lone surrogate cannot be tokenized) and
    a text prompt may not be empty (as vLLM refuses it).
The waiting queue (`--max-waiting-queue-length`) is the engine's; see AsyncEngine.admit.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import RequestError

MAX_DEPTH = 32            # request bodies nest a few levels; deeper is hostile
MAX_STOP = 64
MAX_STOP_CHARS = 256
MAX_CHOICES = 256         # prompts x n in one request (each is an engine request of its own)
DEFAULT_MAX_BODY_BYTES = 4 << 20   # a 4 MiB text prompt takes ~5 s of one core to tokenize
DEFAULT_MAX_WAITING = 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_waiting: int = DEFAULT_MAX_WAITING    # engine requests waiting for a slot, server-wide


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (400) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body of {int(declared)} bytes is over the limit of {limit} bytes "
                           f"(--max-request-bytes).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over the limit of {limit} bytes (--max-request-bytes).")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(data: bytes) -> Any:
    """The JSON body, nested at most MAX_DEPTH levels; RequestError otherwise."""
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e}).") from None
    except RecursionError:
        raise RequestError(f"the request body nests JSON deeper than {MAX_DEPTH} levels.") from None
    except ValueError:  # Python refuses to read integers of more than 4300 digits
        raise RequestError("the request body holds a number too long to read (over 4300 digits).") from None
    if depth(body) > MAX_DEPTH:
        raise RequestError(f"the request body nests JSON deeper than {MAX_DEPTH} levels.")
    return body


def depth(value: Any) -> int:
    """How deep lists and objects nest, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:  # past the limit the answer is known
                todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def check_stops(stops: list[str]) -> list[str]:
    if len(stops) > MAX_STOP:
        raise RequestError(f"stop holds {len(stops)} strings; at most {MAX_STOP} are allowed.")
    long = next((s for s in stops if len(s) > MAX_STOP_CHARS), None)
    if long is not None:
        raise RequestError(f"a stop string of {len(long)} characters is over the limit of {MAX_STOP_CHARS}.")
    return stops


def check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_CHOICES:
        raise RequestError(f"{prompts} prompt(s) x n={n} is {prompts * n} sequences; at most {MAX_CHOICES} "
                           f"are allowed in one request.")


def check_text(text: str, what: str) -> str:
    """`text` as it can be tokenized: valid Unicode (JSON's \\ud800 escapes give lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"there is a lone surrogate (U+{ord(text[e.start]):04X}) in {what} at "
                           f"character {e.start}; send valid Unicode.") from None
    return text
