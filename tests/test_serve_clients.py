"""The server as real clients drive it: the official `openai` package against a real
`python -m tpu_engine.serve` (the default model with its shipped tokenizer, on CPU), checked
against the offline engine on the same prompts and seeds: text and token-id completions, chat,
stop strings and stop token ids, n > 1, echo, logprobs, several served names, and /metrics
under vLLM's names read with the Prometheus client's own parser."""
from __future__ import annotations

import json
import os

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import JAX, SMALL, Server
from tpu_engine import LLM, SamplingParams
from tpu_engine.serve.tokenizer import load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.server]

MODEL, ALIAS = "tpu-engine/tiny-llama", "tiny"
MAX_LEN = 64
PROMPT = "Hello café 東京 🙂 the engine"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    srv = Server(["--served-model-name", MODEL, ALIAS, *SMALL, *JAX], log_path=str(tmp / "server.log"),
                 env={"VLLM_TORCH_PROFILER_DIR": tmp / "xla"}).start()
    srv.tmp = tmp
    try:
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"server exited with {code} on SIGINT:\n{srv.tail()}"
    assert "Traceback" not in srv.log(), f"the server logged a traceback:\n{srv.tail()}"


@pytest.fixture(scope="module")
def offline(launched):
    """The offline engine with the server's settings, warmed up while the server compiles."""
    return LLM(MODEL, backend="jax", max_model_len=MAX_LEN, max_num_seqs=4)


@pytest.fixture(scope="module")
def server(launched) -> Server:
    return launched.wait_ready()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=600, max_retries=0)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL, None)


def _offline(llm: LLM, prompt: list[int], n: int, **params) -> list[int]:
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=n, ignore_eos=True, **params),
                       use_tqdm=False)
    return out[0].outputs[0].token_ids


def _streamed(stream) -> dict[int, dict]:
    """Per choice index: joined text, token ids, finish and stop reasons; and the usage."""
    out: dict = {}
    for chunk in stream:
        if not chunk.choices:
            out["usage"] = chunk.usage
            continue
        (c,) = chunk.choices
        acc = out.setdefault(c.index, {"text": "", "ids": [], "finish": None, "stop": None})
        piece = c.text if hasattr(c, "text") else (c.delta.content or "")
        # a piece never ends inside a character (the rest of its bytes may still come)
        assert not piece.endswith("\ufffd") or c.finish_reason, f"a streamed piece splits a character: {piece!r}"
        acc["text"] += piece
        acc["ids"] += (c.model_extra or {}).get("token_ids") or []
        if c.finish_reason:
            acc["finish"], acc["stop"] = c.finish_reason, (c.model_extra or {}).get("stop_reason")
    return out


def _greedy(client, prompt, n, model=MODEL, **kw):
    return client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                     extra_body={"ignore_eos": True, **kw.pop("extra", {})}, **kw)


def test_text_and_token_id_prompts_agree_with_offline_streamed_or_not(client, offline, tok):
    ids = tok.encode(PROMPT)
    reference = _offline(offline, ids, 12, temperature=0.0)
    plain = _greedy(client, PROMPT, 12)
    (choice,) = plain.choices
    assert choice.model_extra["token_ids"] == reference
    assert choice.text == tok.decode(reference) and choice.text
    assert plain.usage.prompt_tokens == len(ids) and plain.usage.completion_tokens == 12
    by_ids = _greedy(client, ids, 12)
    assert by_ids.choices[0].text == choice.text
    streamed = _streamed(_greedy(client, PROMPT, 12, stream=True, stream_options={"include_usage": True}))
    assert streamed[0]["text"] == choice.text and streamed[0]["ids"] == reference
    assert streamed["usage"].completion_tokens == 12
    sampled = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0.8, seed=7,
                                        extra_body={"ignore_eos": True})
    assert sampled.choices[0].model_extra["token_ids"] == _offline(offline, ids, 10, temperature=0.8, seed=7)


def test_n_samples_use_derived_seeds_and_stream_the_same(client, offline, tok):
    ids = tok.encode(PROMPT)
    kw = dict(model=ALIAS, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, n=3, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw)
    assert plain.model == ALIAS
    assert [c.index for c in plain.choices] == [0, 1, 2]
    # Sample j is the offline request with seed 11 + j, run as the server runs them: the three
    # together (near-uniform random weights: another batch shape can flip a near-tie).
    reference = offline.generate([{"prompt_token_ids": ids}] * 3,
                                 [SamplingParams(temperature=1.0, seed=11 + j, max_tokens=8, ignore_eos=True)
                                  for j in range(3)], use_tqdm=False)
    assert [c.model_extra["token_ids"] for c in plain.choices] == [o.outputs[0].token_ids for o in reference]
    assert len({tuple(c.model_extra["token_ids"]) for c in plain.choices}) == 3
    assert plain.usage.prompt_tokens == len(ids) and plain.usage.completion_tokens == 24
    streamed = _streamed(client.completions.create(**kw, stream=True))
    assert [streamed[j]["text"] for j in range(3)] == [c.text for c in plain.choices]


def test_stop_strings_end_the_text_streamed_or_not(client, tok):
    full = _greedy(client, PROMPT, 30).choices[0]
    text = full.text
    stop = next(text[i:i + 3] for i in range(4, len(text)) if text[i:i + 3].strip() == text[i:i + 3])
    cut = text.index(stop)
    for include in (False, True):
        extra = {"include_stop_str_in_output": include}
        plain = _greedy(client, PROMPT, 30, stop=[stop, "never-there"], extra=extra).choices[0]
        assert plain.text == text[:cut + (len(stop) if include else 0)]
        assert (plain.finish_reason, plain.model_extra["stop_reason"]) == ("stop", stop)
        ids = plain.model_extra["token_ids"]
        assert ids == full.model_extra["token_ids"][:len(ids)] and len(ids) < 30
        assert tok.decode(ids).startswith(plain.text) and not tok.decode(ids[:-1]).count(stop)
        streamed = _streamed(_greedy(client, PROMPT, 30, stop=stop, stream=True, extra=extra))[0]
        assert (streamed["text"], streamed["ids"], streamed["finish"]) == (plain.text, ids, "stop")


def test_stop_token_ids_end_the_request_at_that_token(client, tok):
    full = _greedy(client, [5, 6, 7], 10).choices[0].model_extra["token_ids"]
    stop_id = full[3]
    at = full.index(stop_id)
    for include in (False, True):
        c = _greedy(client, [5, 6, 7], 10, extra={"stop_token_ids": [stop_id],
                                                   "include_stop_str_in_output": include}).choices[0]
        assert c.model_extra["token_ids"] == full[:at + 1]
        assert (c.finish_reason, c.model_extra["stop_reason"]) == ("stop", stop_id)
        assert c.text == tok.decode(full[:at + (1 if include else 0)])


def test_echo_returns_the_prompt_tokens_and_text(client, tok):
    prompt = tok.encode("the engine")
    plain = _greedy(client, prompt, 4)
    echoed = _greedy(client, prompt, 4, echo=True).choices[0]
    assert echoed.model_extra["prompt_token_ids"] == prompt
    assert echoed.text == tok.decode(prompt) + plain.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        _greedy(client, prompt, 4, echo=True, logprobs=1)
    assert "prompt logprobs" in e.value.body["message"]


def test_logprobs_equal_offline(client, offline, tok):
    ids = tok.encode(PROMPT)
    ref = offline.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True,
                                                                        logprobs=2), use_tqdm=False)[0].outputs[0]
    lp = _greedy(client, PROMPT, 4, logprobs=2).choices[0].logprobs
    assert lp.tokens == [tok.token_text(t) for t in ref.token_ids]
    assert lp.token_logprobs == pytest.approx([e[t].logprob for t, e in zip(ref.token_ids, ref.logprobs)], abs=1e-4)
    assert all(len(top) >= 2 for top in lp.top_logprobs)


def test_chat_completions_streamed_or_not(client, offline, tok):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi café"}]
    prompt = tok.encode("system: Be terse.\nuser: Hi café\nassistant:")  # the plain template
    reference = _offline(offline, prompt, 8, temperature=0.0)
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert plain.object == "chat.completion"
    (c,) = plain.choices
    assert c.message.role == "assistant" and c.message.content == tok.decode(reference)
    assert c.model_extra["token_ids"] == reference and c.finish_reason == "length"
    assert [e.token for e in c.logprobs.content] == [tok.token_text(t) for t in reference]
    assert all(len(e.top_logprobs) == 2 for e in c.logprobs.content)
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (len(prompt), 8)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    streamed = _streamed(iter(chunks))
    assert streamed[0]["text"] == c.message.content and streamed[0]["ids"] == reference
    assert streamed["usage"].completion_tokens == 8


_BAD_CHATS = [
    ("no messages", {"max_tokens": 2}, "messages must be a non-empty list"),
    ("empty messages", {"messages": [], "max_tokens": 2}, "messages must be a non-empty list"),
    ("wrong role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0] has role 'robot'"),
    ("content not text", {"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0] content must be"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "content parts other than text"),
    ("penalty out of range", {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5},
     "presence_penalty 2.5 must be a number from -2 to 2"),
    ("logprobs not a bool", {"messages": [{"role": "user", "content": "x"}], "logprobs": 3}, "logprobs must be true or false"),
    ("too long", {"messages": [{"role": "user", "content": "x " * 80}]}, "exceeds max_model_len"),
]


@pytest.mark.parametrize("what, body, fragment", _BAD_CHATS, ids=[b[0] for b in _BAD_CHATS])
def test_bad_chat_requests_get_one_sentence_and_the_server_keeps_serving(server, what, body, fragment):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, **body}, timeout=600)
    assert r.status_code == 400, f"{what}: HTTP {r.status_code} {r.text}"
    message = r.json()["error"]["message"]
    assert fragment in message, f"{what}: {message!r}"
    assert message.endswith(".") and ". " not in message and "\n" not in message, f"{what}: {message!r}"
    ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=600,
                    json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2, ok.text


def test_models_lists_every_served_name_and_unknown_names_are_404(client):
    assert [m.id for m in client.models.list().data] == [MODEL, ALIAS]
    with pytest.raises(openai.NotFoundError) as e:
        _greedy(client, [1, 2], 2, model="nope")
    assert e.value.body["message"] == f"the model 'nope' does not exist; this server serves '{MODEL}', '{ALIAS}'."


def _scrape(url) -> dict:
    """Every sample as (name, sorted labels) -> value, with the families' types."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    values, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            values[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")),
                    s.labels.get("le"))] = s.value
    return {"values": values, "types": types}


def _value(m, name, **labels):
    return m["values"].get((name, tuple(sorted({"model_name": MODEL, **labels}.items())), None), 0.0)


def test_metrics_parse_and_count_what_was_sent(server, client):
    before = _scrape(server.url)
    prompts = [[3, 4, 5], list(range(10, 30)), [7]]
    for p in prompts:
        _greedy(client, p, 5)
    full = _greedy(client, [8, 9], 6).choices[0].model_extra["token_ids"]
    _greedy(client, [8, 9], 6, extra={"stop_token_ids": [full[1]]})  # ends at full[1]'s first place
    after = _scrape(server.url)
    types = after["types"]
    assert types["vllm:num_requests_running"] == types["vllm:num_requests_waiting"] == "gauge"
    assert types["vllm:prompt_tokens"] == types["vllm:generation_tokens"] == types["vllm:request_success"] == "counter"
    for h in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
              "request_queue_time_seconds", "request_prompt_tokens", "request_generation_tokens"):
        assert types[f"vllm:{h}"] == "histogram", h

    def diff(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)
    assert diff("vllm:prompt_tokens_total") == sum(map(len, prompts)) + 4
    assert diff("vllm:request_success_total", finished_reason="length") == 4
    assert diff("vllm:request_success_total", finished_reason="stop") == 1
    assert diff("vllm:time_to_first_token_seconds_count") == 5
    assert diff("vllm:e2e_request_latency_seconds_count") == 5
    assert diff("vllm:request_prompt_tokens_sum") == sum(map(len, prompts)) + 4
    gen = diff("vllm:generation_tokens_total")
    assert gen == 3 * 5 + 6 + full.index(full[1]) + 1
    assert diff("vllm:request_generation_tokens_sum") == gen
    assert diff("vllm:inter_token_latency_seconds_count") == gen - 5  # every token but each first
    assert _value(after, "vllm:num_requests_running") == 0 == _value(after, "vllm:num_requests_waiting")


def test_unsupported_fields_are_refused_plainly_and_penalties_served(server, client):
    for field, value in (("best_of", 2), ("min_p", 0.1), ("logit_bias", {"5": 1})):
        r = httpx.post(f"{server.url}/v1/completions", timeout=600,
                       json={"prompt": [1, 2], "max_tokens": 2, field: value})
        assert r.status_code == 400 and json.loads(r.text)["error"]["message"].startswith(f"{field}={value!r} is not supported")
    # this server was started without --enable-prompt-logprobs: echo with logprobs is refused, saying so
    with pytest.raises(openai.BadRequestError, match="start it with enable_prompt_logprobs=True .*--enable-prompt-logprobs"):
        client.completions.create(model=ALIAS, prompt=[1, 2, 3], max_tokens=1, logprobs=1, echo=True)
    out = client.completions.create(model=ALIAS, prompt=[1, 2, 3], max_tokens=4, temperature=0, presence_penalty=1.0,
                                    frequency_penalty=0.5, extra_body={"repetition_penalty": 1.3, "ignore_eos": True})
    assert len(out.choices[0].model_extra["token_ids"]) == 4


@pytest.mark.parametrize("mode", [("--prompt-kind", "text"), ("--backend", "openai-chat")], ids=["text", "chat"])
def test_benchmark_serving_sends_text_and_chat(server, tmp_path, mode):
    """scripts/benchmark_serving.py sends text prompts (as `vllm bench serve` does) or chat
    messages; every request succeeds and is timed."""
    import subprocess
    import sys
    from tests.servers import ROOT
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_serving.py", "--disable-tqdm", "--base-url", server.url,
                        "--model", ALIAS, "--num-prompts", "4", "--random-input-len", "6", "--random-output-len", "4",
                        *mode, "--result-json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert (res["completed"], res["failed"]) == (4, 0), res["first_error"]
    for q in res["requests"]:
        assert q["output_tokens"] == q["usage_completion_tokens"] == 4
        assert q["prompt_len"] >= 6  # the server's count of the text's tokens
        assert len(q["itl_s"]) == 3


def test_sigint_with_a_capture_open_saves_it(server, client):
    """Last (it stops the module's server): Ctrl-C takes the same shutdown path as SIGTERM
    (tests/test_reliability_limits.py, and for torch_xla tests/test_service_server.py)."""
    assert httpx.post(f"{server.url}/start_profile", timeout=60).status_code == 200
    _greedy(client, [4, 5, 6], 3)
    assert server.stop() == 0, server.tail()
    runs = os.listdir(server.tmp / "xla" / "plugins" / "profile")
    assert len(runs) == 1 and runs[0].endswith("_serve-prefill-decode") and "Capture (open at shutdown)" in server.log()
