"""One choice's text as its tokens arrive: incremental detokenization with stop strings.

Both the streamed and the plain response are built from the pieces `TextStream.add` returns, so
the streamed chunks join up exactly to the plain text. A piece is the new end of the decoded
output, held back while
  * it ends in a partial UTF-8 character (the decoder shows it as U+FFFD), and
  * its end could be the start of a stop string (that text may yet be cut off).
Stop strings are matched on the decoded text, so a match never splits a character.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Stop:
    """Why the text ended early: a stop string (the engine request must then be aborted), or a
    stop token id (the engine already ended the request)."""
    reason: str | int


class TextStream:
    def __init__(self, tokenizer, stop: list[str] = (), include_stop: bool = False,
                 stop_token_ids: list[int] | None = None):
        self.tokenizer, self.stops, self.include_stop = tokenizer, list(stop), include_stop
        self.stop_token_ids = set(stop_token_ids or ())
        self.sent = ""                  # the text handed out so far
        self.stopped: Stop | None = None
        self.num_tokens = 0             # output tokens the text covers (the stop string's last one included)

    def add(self, ids: list[int], finished: bool) -> str:
        """The next piece of text for the output's token ids so far (all of them, not just the
        new ones); `finished`: the engine ended the request."""
        if self.stopped is not None:
            return ""
        self.num_tokens = len(ids)
        if self.tokenizer is None:
            return ""
        text_ids = ids
        if finished and ids and ids[-1] in self.stop_token_ids:
            self.stopped = Stop(ids[-1])
            if not self.include_stop:  # the stop token's own text stays out, as vLLM leaves it
                text_ids = ids[:-1]
        full = self.tokenizer.decode(text_ids)
        if not full.startswith(self.sent):  # the decoder rewrote handed-out text: wait for more
            return ""
        hit = self._find_stop(full)
        if hit is not None:
            at, stop = hit
            self.stopped = Stop(stop)
            full = full[:at + (len(stop) if self.include_stop else 0)]
            return self._emit(full)
        if not finished:
            if full.endswith("\ufffd"):
                return ""
            full = full[:len(full) - self._held(full)]
        return self._emit(full)

    def _emit(self, full: str) -> str:
        new = full[len(self.sent):] if len(full) > len(self.sent) else ""
        self.sent += new
        return new

    def _find_stop(self, full: str) -> tuple[int, str] | None:
        """The earliest stop string in the text not yet handed out (held-back text included:
        handed-out text never holds the start of a match)."""
        hits = [(i, s) for s in self.stops if (i := full.find(s, len(self.sent))) >= 0]
        return min(hits) if hits else None

    def _held(self, full: str) -> int:
        """How many trailing characters could begin a stop string: the longest k < len(s) with
        `full` ending in s[:k]. Only the k where s[k-1] is the text's last character can, so
        rfind jumps between them (64 stop strings of 256 characters cost ~5 ms a token when
        every k was tried, on the event loop)."""
        held, last = 0, full[-1:]
        if not last:
            return 0
        for s in self.stops:
            k = min(len(s) - 1, len(full))
            while k > held:
                j = s.rfind(last, 0, k)
                if j < held:
                    break
                if full.endswith(s[:j + 1]):
                    held = j + 1
                    break
                k = j
        return held
