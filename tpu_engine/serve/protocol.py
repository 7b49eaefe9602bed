"""The OpenAI `/v1/completions` and `/v1/chat/completions` requests, checked field by field into
token-id prompts, SamplingParams and the server-side options (n, stop strings, echo). Every
problem is a RequestError with one plain sentence and an HTTP status."""
from __future__ import annotations

import dataclasses
import math
import reprlib
from typing import Any

from ..sampling import MAX_LOGPROBS
from ..outputs import SamplingParams
from .chat import render_chat
from .errors import RequestError
from .limits import check_choices, check_stops, check_text

MAX_N = 128   # samples per prompt: a guard against one request filling every queue
INT32_MAX = 2**31 - 1


@dataclasses.dataclass
class CompletionRequest:
    prompts: list[list[int]]        # token ids, one list per prompt
    texts: list[str | None]         # the prompt text, where it was given as text
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: bool
    model: str = ""                 # the served name the client asked for
    n: int = 1                      # samples per prompt
    stop: list[str] = dataclasses.field(default_factory=list)
    include_stop: bool = False      # include_stop_str_in_output
    show_prompt_logprobs: bool = False  # vLLM's `prompt_logprobs` field in each choice

    def sample_params(self, j: int) -> SamplingParams:
        """Sample j's params: with a seed, sample j uses seed + j (as vLLM does), so sample 0
        equals an offline request with the same seed."""
        if self.params.seed is None or j == 0:
            return self.params
        return dataclasses.replace(self.params, seed=self.params.seed + j)


# Fields this engine cannot honour: a request that sets them to anything but their neutral
# value is refused rather than silently served differently.
_NEUTRAL = {"best_of": 1, "suffix": None, "logit_bias": None, "min_tokens": 0, "min_p": 0,
            "response_format": {"type": "text"}, "tools": None, "tool_choice": "none",
            "functions": None, "function_call": None, "guided_json": None, "guided_regex": None,
            "guided_choice": None, "guided_grammar": None, "structured_outputs": None}
_STRUCTURED = "structured output is not implemented, so the text would not follow it"
_TOOLS = "tool calling is not implemented, so no tool call would be made"
_WHY = {**{k: _STRUCTURED for k in ("response_format", "guided_json", "guided_regex", "guided_choice",
                                    "guided_grammar", "structured_outputs")},
        **{k: _TOOLS for k in ("tools", "tool_choice", "functions", "function_call")}}

_NUMBERS = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "repetition_penalty": 1.0}   # (the penalties' ranges are SamplingParams')
_INTEGERS = {"max_tokens": 16, "top_k": -1, "logprobs": None, "seed": None, "n": 1, "prompt_logprobs": None}
# The integers' ranges, checked where they are parsed: (lowest, highest, what is expected). A
# seed of any size is hashed to 32 bits and a top_k of the vocabulary or more means "off"
# (engine.py), so neither reaches a tensor as sent and neither has an upper bound here.
_RANGES = {"max_tokens": (1, INT32_MAX, "an integer from 1 to 2147483647"),
           "top_k": (-1, math.inf, "-1 or 0 (off) or a positive integer"),
           "logprobs": (0, MAX_LOGPROBS, f"an integer from 0 to {MAX_LOGPROBS}"),
           "top_logprobs": (0, MAX_LOGPROBS, f"an integer from 0 to {MAX_LOGPROBS}"),
           "prompt_logprobs": (0, MAX_LOGPROBS, f"an integer from 0 to {MAX_LOGPROBS}"),
           "n": (1, MAX_N, f"an integer from 1 to {MAX_N}")}
_BOOLS = {"stream": False, "ignore_eos": False, "echo": False, "include_stop_str_in_output": False}


def _is_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond any float (it would overflow on the engine thread)
        return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxlong = 3, 6, 6, 60, 60


def show(v, limit: int = 60) -> str:
    """A value for an error sentence: its repr, cut short (a prompt can be megabytes, and a
    list nested hundreds deep must not be walked recursively)."""
    if _is_int(v) and abs(v) > 10**limit:  # (str() refuses ints of over 4300 digits)
        return f"an integer of {len(str(abs(v)))} digits" if v.bit_length() < 14_000 else "a huge integer"
    text = _SHORT.repr(v) if isinstance(v, (list, dict, tuple)) else repr(v)
    return text if len(text) <= limit else text[:limit] + "…"


def check_model(body: Any, served: list[str]) -> str:
    """The served name the request asks for (default: the first)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        return served[0]
    if model not in served:
        names = ", ".join(repr(s) for s in served)
        raise RequestError(f"the model {show(model)} does not exist; this server serves {names}.", 404)
    return model


def _fields(body: dict, integers: dict) -> dict[str, Any]:
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if name == "tool_choice" and value == "auto" and not body.get("tools"):
            continue  # "auto" with no tools: nothing to call
        if value is not None and value != neutral and value != [] and value != {}:
            why = f" ({_WHY[name]})" if name in _WHY else ""
            raise RequestError(f"{name}={show(value)} is not supported by this server{why}.")
    values: dict[str, Any] = {}
    for name, default in {**_NUMBERS, **integers, **_BOOLS}.items():
        v = body.get(name)
        if v is None:
            values[name] = default
            continue
        ok = _is_number(v) if name in _NUMBERS else _is_int(v) if name in integers else isinstance(v, bool)
        low, high, what = _RANGES.get(name, (None, None, ""))
        if ok and low is not None and not low <= v <= high:
            ok = False
        if not ok:
            kind = what or ("a finite number" if name in _NUMBERS else "an integer" if name in integers
                            else "true or false")
            raise RequestError(f"{name} must be {kind}, not {show(v)}.")
        values[name] = v
    values["stop"] = _stop(body.get("stop"))
    ids = body.get("stop_token_ids")
    if ids is not None and not (isinstance(ids, list) and all(_is_int(t) and 0 <= t <= INT32_MAX for t in ids)):
        raise RequestError(f"stop_token_ids must be a list of token ids (integers from 0 to {INT32_MAX}), "
                           f"not {show(ids)}.")
    values["stop_token_ids"] = list(ids or [])
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise RequestError(f"stream_options must be an object, not {show(options)}.")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):  # strict: the string "no" is not true
        raise RequestError(f"stream_options.include_usage must be true or false, not {show(usage)}.")
    values["include_usage"] = usage
    return values


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise RequestError(f"stop must be a non-empty string or a list of them, not {show(stop)}.")
    return check_stops(items)


def _params(values: dict, logprobs: int | None, prompt_logprobs: int | None = None) -> SamplingParams:
    try:
        return SamplingParams(temperature=values["temperature"], top_p=values["top_p"], top_k=values["top_k"],
                              max_tokens=values["max_tokens"], ignore_eos=values["ignore_eos"],
                              logprobs=logprobs, seed=values["seed"], stop_token_ids=values["stop_token_ids"],
                              presence_penalty=values["presence_penalty"],
                              frequency_penalty=values["frequency_penalty"],
                              repetition_penalty=values["repetition_penalty"], prompt_logprobs=prompt_logprobs)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _request(prompts, texts, values, params, model, echo) -> CompletionRequest:
    check_choices(len(prompts), values["n"])
    if values["stop"] and not values.get("has_tokenizer", True):
        raise RequestError("stop strings need a tokenizer, which this model does not have; use stop_token_ids.")
    return CompletionRequest(prompts, texts, params, values["stream"], values["include_usage"], echo, model,
                             values["n"], values["stop"], values["include_stop_str_in_output"])


def parse_completion(body: Any, served: list[str], tokenizer) -> CompletionRequest:
    model = check_model(body, served)
    values = _fields(body, _INTEGERS)
    if "prompt" not in body:
        raise RequestError("the request has no 'prompt'.")
    # echo with logprobs scores the prompt too (lm-eval's loglikelihood), as vLLM does
    scored = values["prompt_logprobs"]
    if values["echo"] and values["logprobs"] is not None and scored is None:
        scored = values["logprobs"]
    prompts, texts = _prompts(body["prompt"], tokenizer, values["n"])
    values["has_tokenizer"] = tokenizer is not None
    req = _request(prompts, texts, values, _params(values, values["logprobs"], scored), model, values["echo"])
    req.show_prompt_logprobs = values["prompt_logprobs"] is not None
    return req


def parse_chat(body: Any, served: list[str], tokenizer, max_model_len: int) -> CompletionRequest:
    """A chat request as a one-prompt completion of the rendered conversation. `max_tokens`
    (or `max_completion_tokens`) defaults to the rest of the context, as in vLLM."""
    model = check_model(body, served)
    if body.get("echo"):
        raise RequestError("echo is not supported for chat completions.")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    try:
        values = _fields({**body, "max_tokens": limit, "logprobs": None}, {**_INTEGERS, "top_logprobs": None})
    except RequestError as e:  # name the field the client sent
        if body.get("max_completion_tokens") is not None and str(e).startswith("max_tokens "):
            raise RequestError("max_completion_tokens" + str(e)[len("max_tokens"):]) from None
        raise
    if body.get("prompt_logprobs") is not None:
        raise RequestError("prompt_logprobs is not supported for chat completions; use /v1/completions.")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(f"logprobs must be true or false for chat completions, not {show(logprobs)}.")
    if tokenizer is None:
        raise RequestError("chat needs a tokenizer, which this model does not have; use /v1/completions with token ids.")
    text, special = render_chat(body.get("messages"), tokenizer, body.get("add_generation_prompt", True))
    prompt = tokenizer.encode(check_text(text, "the messages"), add_special_tokens=special)
    if not prompt:
        raise RequestError("the chat template rendered the messages as an empty prompt.")
    if limit is None:
        values["max_tokens"] = max(1, max_model_len - len(prompt))
    top = values["top_logprobs"]
    params = _params(values, (top or 0) if logprobs else None)
    return _request([prompt], [text], values, params, model, False)


def _prompts(prompt: Any, tokenizer, n: int) -> tuple[list[list[int]], list[str | None]]:
    """A string, a list of token ids, or a list of either (counted before any is tokenized)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        items = prompt
    else:
        raise RequestError("prompt must be a string, a list of token ids, or a non-empty list of those.")
    check_choices(len(items), n)
    ids, texts = [], []
    for p in items:
        if isinstance(p, str):
            if tokenizer is None:
                raise RequestError("this model has no tokenizer (no tokenizer.json); send the prompt as a list of token ids.")
            if not p:
                raise RequestError("the prompt is an empty string; it needs at least one character.")
            ids.append(tokenizer.encode(check_text(p, "the prompt")))
            texts.append(p)
        elif p and all(_is_int(t) for t in p):
            ids.append(list(p))
            texts.append(None)
        else:
            raise RequestError("each prompt must be a string or a non-empty list of integer token ids.")
    return ids, texts
