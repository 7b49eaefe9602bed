"""The response bodies: `Delta`s (what one engine output adds to one choice) into completion or
chat choices, streamed chunks, and usage. The two formats share everything but their shapes."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..outputs import Logprob
from .protocol import CompletionRequest


@dataclasses.dataclass
class Delta:
    """What one engine output adds to choice `index` (prompt i * n + sample j)."""
    index: int
    prompt_index: int
    token_ids: list[int]                 # the new tokens
    logprobs: list[dict[int, Logprob]]   # one entry per new token, if asked for
    text: str                            # the new text
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list | None = None  # on a choice's first delta, when the prompt was scored


@dataclasses.dataclass
class Choice:
    """One choice's whole output, built from its deltas."""
    index: int
    prompt_index: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list | None = None

    def add(self, d: Delta) -> None:
        self.prompt_logprobs = self.prompt_logprobs or d.prompt_logprobs
        self.token_ids += d.token_ids
        self.logprobs += d.logprobs
        self.text += d.text
        self.finish_reason, self.stop_reason = d.finish_reason, d.stop_reason


def usage(req: CompletionRequest, completion_tokens: int) -> dict:
    """Prompt tokens count once per prompt, whatever n is (as in vLLM)."""
    prompt = sum(len(p) for p in req.prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class CompletionFormat:
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl"

    def __init__(self, req: CompletionRequest, tokenizer, decode):
        self.req, self.tokenizer, self.decode = req, tokenizer, decode

    def _echo(self, prompt_index: int) -> str:
        text = self.req.texts[prompt_index]
        return text if text is not None else self.decode(self.req.prompts[prompt_index])

    def _shape(self, c: Choice | Delta, first: bool) -> dict:
        ids, logprobs = c.token_ids, c.logprobs
        out: dict[str, Any] = {"index": c.index, "text": c.text, "token_ids": list(ids), "logprobs": None,
                               "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
        prompt = self.req.prompts[c.prompt_index]
        if self.req.echo and first:  # the prompt leads the first chunk (or the whole choice)
            out["text"] = self._echo(c.prompt_index) + c.text
            out["prompt_token_ids"] = list(prompt)
            if c.prompt_logprobs:  # echo with logprobs: the prompt's tokens lead the lists
                ids, logprobs = list(prompt) + list(ids), list(c.prompt_logprobs) + list(logprobs)
        name = self.tokenizer.token_text if self.tokenizer else str
        if self.req.params.logprobs is not None:
            out["logprobs"] = {"tokens": [name(t) for t in ids],
                               "token_logprobs": [e[t].logprob if e else None for t, e in zip(ids, logprobs)],
                               "top_logprobs": [{name(k): v.logprob for k, v in e.items()} if e else None
                                                for e in logprobs],
                               "text_offset": None}
        if self.req.show_prompt_logprobs and first:  # vLLM's field: token id -> logprob, rank, text
            out["prompt_logprobs"] = [None if e is None else {
                str(k): {"logprob": v.logprob, "rank": v.rank, "decoded_token": name(k)} for k, v in e.items()}
                for e in c.prompt_logprobs or []]
        return out

    def choice(self, c: Choice) -> dict:
        return self._shape(c, True)

    def chunk_choices(self, d: Delta, first: bool) -> list[dict]:
        return [self._shape(d, first)]


class ChatFormat(CompletionFormat):
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def _logprobs(self, ids, entries) -> dict | None:
        if self.req.params.logprobs is None:
            return None
        tok = self.tokenizer

        def item(t, lp):
            return {"token": tok.token_text(t), "logprob": lp.logprob, "bytes": tok.token_bytes(t)}
        top = self.req.params.logprobs
        return {"content": [{**item(t, e[t]), "top_logprobs": [
            item(k, v) for k, v in sorted(e.items(), key=lambda kv: -kv[1].logprob)[:top]]}
            for t, e in zip(ids, entries)]}

    def choice(self, c: Choice) -> dict:
        return {"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": self._logprobs(c.token_ids, c.logprobs), "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason, "token_ids": list(c.token_ids)}

    def chunk_choices(self, d: Delta, first: bool) -> list[dict]:
        out = []
        if first:  # the role comes first, alone, as OpenAI streams it
            out.append({"index": d.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None})
        out.append({"index": d.index, "delta": {"content": d.text}, "token_ids": list(d.token_ids),
                    "logprobs": self._logprobs(d.token_ids, d.logprobs), "finish_reason": d.finish_reason,
                    "stop_reason": d.stop_reason})
        return out
