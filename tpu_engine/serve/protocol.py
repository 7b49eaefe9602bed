"""The OpenAI `/v1/completions` request, checked field by field into token-id prompts and
SamplingParams. Every problem is a RequestError with one plain sentence and an HTTP status."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..outputs import SamplingParams


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class CompletionRequest:
    prompts: list[list[int]]        # token ids, one list per prompt
    texts: list[str | None]         # the prompt text, where it was given as text
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: bool


# OpenAI/vLLM fields this engine cannot honour: a request that sets them to anything but their
# neutral value is refused rather than silently served differently.
_NEUTRAL = {"n": 1, "best_of": 1, "suffix": None, "stop": None, "stop_token_ids": None,
            "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1,
            "logit_bias": None, "min_tokens": 0, "min_p": 0}

_NUMBERS = {"temperature": 1.0, "top_p": 1.0}
_INTEGERS = {"max_tokens": 16, "top_k": -1, "logprobs": None, "seed": None}
_BOOLS = {"stream": False, "ignore_eos": False, "echo": False}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_completion(body: Any, served_model: str, tokenizer) -> CompletionRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    model = body.get("model")
    if model is not None and model != served_model:
        raise RequestError(f"the model {model!r} does not exist; this server serves {served_model!r}.", 404)
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and value != neutral and value != [] and value != {}:
            raise RequestError(f"{name}={value!r} is not supported by this server.")
    values: dict[str, Any] = {}
    for name, default in {**_NUMBERS, **_INTEGERS, **_BOOLS}.items():
        v = body.get(name)
        if v is None:
            values[name] = default
            continue
        ok = _is_number(v) if name in _NUMBERS else _is_int(v) if name in _INTEGERS else isinstance(v, bool)
        if not ok:
            kind = "a finite number" if name in _NUMBERS else "an integer" if name in _INTEGERS else "true or false"
            raise RequestError(f"{name} must be {kind}, not {v!r}.")
        values[name] = v
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise RequestError(f"stream_options must be an object, not {options!r}.")
    if "prompt" not in body:
        raise RequestError("the request has no 'prompt'.")
    prompts, texts = _prompts(body["prompt"], tokenizer)
    try:
        params = SamplingParams(temperature=values["temperature"], top_p=values["top_p"],
                                top_k=values["top_k"], max_tokens=values["max_tokens"],
                                ignore_eos=values["ignore_eos"], logprobs=values["logprobs"],
                                seed=values["seed"])
    except ValueError as e:
        raise RequestError(str(e)) from None
    return CompletionRequest(prompts, texts, params, values["stream"],
                             bool(options.get("include_usage")), values["echo"])


def _prompts(prompt: Any, tokenizer) -> tuple[list[list[int]], list[str | None]]:
    """A string, a list of token ids, or a list of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        items = prompt
    else:
        raise RequestError("prompt must be a string, a list of token ids, or a non-empty list of those.")
    ids, texts = [], []
    for p in items:
        if isinstance(p, str):
            if tokenizer is None:
                raise RequestError("this model has no tokenizer (no tokenizer.json); send the prompt as a list of token ids.")
            ids.append(tokenizer.encode(p))
            texts.append(p)
        elif p and all(_is_int(t) for t in p):
            ids.append(list(p))
            texts.append(None)
        else:
            raise RequestError("each prompt must be a string or a non-empty list of integer token ids.")
    return ids, texts
