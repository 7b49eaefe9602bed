"""The OpenAI-compatible server (`python -m tpu_engine.serve`), run as a user runs it: a real
server process on loopback, the tiny model on CPU, real HTTP clients.

Two servers serve the module: the default model (its shipped tokenizer; the tests here send token
ids) and a tiny HF checkpoint with a word-level tokenizer.json and a chat template in its
tokenizer_config.json (text prompts, chat). Both are launched at once and compile while
the offline reference engine warms up in the test process. (One module, over 300 lines, because
every test here shares those servers: starting them again for a second module would cost a
minute of CI.)
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import types

import httpx
import pytest

from tests.servers import JAX, SMALL, Server, wait_until
from tpu_engine import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.server]

MODEL = "tpu-engine/tiny-llama"
VOCAB = 32000           # tiny-llama's vocabulary
MAX_LEN = 64            # --max-model-len in SMALL
WORDS_MODEL = "tiny-words"
WORDS_VOCAB = 512       # tests/models.py SMALL
CLIENT_TIMEOUT = httpx.Timeout(600.0)  # a guard against hangs, not a performance bound
# The word model's chat template (HF's Jinja dialect): user and assistant turns only.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
                 "{{ raise_exception('System messages are not supported by this template.') }}{% endif %}"
                 "{{ 'w10' if m['role'] == 'user' else 'w11' }} {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}w11{% endif %}")


# ---- fixtures -------------------------------------------------------------------------------
def _word_tokenizer(path: str):
    """A WordLevel tokenizer covering the whole vocabulary: "[UNK]" 0, "<s>" 1, "</s>" 2 (the
    checkpoint's bos/eos), then "w3" ... "w511"; whitespace pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, WORDS_VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[UNK]", "<s>", "</s>"])
    tok.save(path)
    return Tokenizer.from_file(path)


@pytest.fixture(scope="module")
def launched(llama_dir, tmp_path_factory):
    """Both servers, started (not yet ready): the main one on torch_xla, the one with a word
    tokenizer and a chat template on JAX. Each must stop cleanly on SIGINT at the end."""
    words_dir = str(tmp_path_factory.mktemp("words") / "model")
    shutil.copytree(llama_dir, words_dir)
    tokenizer = _word_tokenizer(os.path.join(words_dir, "tokenizer.json"))
    with open(os.path.join(words_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}, f)
    logs = tmp_path_factory.mktemp("serve_logs")
    main = Server(SMALL, log_path=str(logs / "main.log")).start()
    words = Server(["--model", words_dir, "--served-model-name", WORDS_MODEL, *SMALL, *JAX],
                   log_path=str(logs / "words.log")).start()
    try:
        yield types.SimpleNamespace(main=main, words=words, tokenizer=tokenizer)
    finally:
        codes = {s.log_path: s.stop() for s in (main, words)}
    for srv in (main, words):
        assert codes[srv.log_path] == 0, f"server exited with {codes[srv.log_path]} on SIGINT:\n{srv.tail()}"
        assert "Traceback" not in srv.log(), f"the server logged a traceback:\n{srv.tail()}"


@pytest.fixture(scope="module")
def offline(launched):
    """The offline engine with the server's settings (same model, seed, slots), built while the
    servers compile."""
    return LLM(MODEL, max_model_len=MAX_LEN, max_num_seqs=4)


@pytest.fixture(scope="module")
def server(launched) -> Server:
    return launched.main.wait_ready()


@pytest.fixture(scope="module")
def words(launched):
    launched.words.wait_ready()
    return launched


# ---- helpers --------------------------------------------------------------------------------
def _greedy_body(prompt, max_tokens, **extra) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **extra}


def _offline_greedy(llm: LLM, prompts, max_tokens) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in max_tokens],
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _events(text: str) -> list:
    """The `data:` payloads of an SSE body, parsed; the final "[DONE]" kept as the string."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


def _check_stream(events: list, n_prompts: int) -> tuple[dict[int, list[int]], dict[int, str], dict]:
    """Check the shape of a streamed completion (chunks, one finish per prompt, usage, [DONE]);
    returns (token ids per prompt index, text per prompt index, usage)."""
    assert events and events[-1] == "[DONE]", f"the stream does not end with [DONE]: {events[-3:]}"
    *chunks, usage_chunk, _ = events
    assert usage_chunk["choices"] == [] and "usage" in usage_chunk, "no usage chunk before [DONE]"
    ids: dict[int, list[int]] = {i: [] for i in range(n_prompts)}
    texts: dict[int, str] = {i: "" for i in range(n_prompts)}
    finished: dict[int, str] = {}
    for chunk in chunks:
        assert "error" not in chunk, f"error in stream: {chunk}"
        assert chunk["object"] == "text_completion" and chunk["id"] == usage_chunk["id"]
        (choice,) = chunk["choices"]
        i = choice["index"]
        assert i not in finished, f"prompt {i} got a chunk after its finish_reason"
        assert choice["token_ids"], f"an empty chunk for prompt {i}"
        ids[i] += choice["token_ids"]
        texts[i] += choice["text"]
        if choice["finish_reason"] is not None:
            finished[i] = choice["finish_reason"]
    assert finished == {i: "length" for i in range(n_prompts)}, f"finish reasons {finished}"
    return ids, texts, usage_chunk["usage"]


async def _complete(client: httpx.AsyncClient, url: str, body: dict) -> tuple[list[list[int]], dict]:
    """POST one completion (streamed if body["stream"]); returns (token ids per prompt, usage)."""
    n_prompts = len(body["prompt"]) if isinstance(body["prompt"][0], list) else 1
    if body.get("stream"):
        body = {**body, "stream_options": {"include_usage": True}}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            text = (await r.aread()).decode()
            assert r.status_code == 200, f"HTTP {r.status_code}: {text}"
            assert r.headers["content-type"].startswith("text/event-stream")
        ids, _, usage = _check_stream(_events(text), n_prompts)
        return [ids[i] for i in range(n_prompts)], usage
    r = await client.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text}"
    resp = r.json()
    assert resp["object"] == "text_completion" and resp["model"] == MODEL
    assert [c["index"] for c in resp["choices"]] == list(range(n_prompts))
    assert all(c["finish_reason"] == "length" for c in resp["choices"]), resp["choices"]
    return [c["token_ids"] for c in resp["choices"]], resp["usage"]


def _divergence(llm: LLM, prompt: list[int], served: list[int], offline: list[int]) -> str:
    """Where a served greedy output leaves the offline one, and the offline top-2 logprob gap
    there (a gap near 1e-6 is a float32 near-tie that another batch shape can flip)."""
    j = next(k for k, (a, b) in enumerate(zip(served, offline)) if a != b)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(
        temperature=0.0, max_tokens=len(offline), ignore_eos=True, logprobs=2), use_tqdm=False)[0].outputs[0]
    top = sorted((lp.logprob for lp in out.logprobs[j].values()), reverse=True)
    return (f"prompt of {len(prompt)} tokens: token {j} served {served[j]}, offline {offline[j]}, "
            f"offline top-2 logprob gap {top[0] - top[1]:.3g}")


def _check_usage(usage: dict, prompts: list[list[int]], max_tokens: int) -> None:
    prompt_tokens = sum(len(p) for p in prompts)
    assert usage == {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens * len(prompts),
                     "total_tokens": prompt_tokens + max_tokens * len(prompts)}, usage


def _health_ok(url: str) -> bool:
    r = httpx.get(f"{url}/health", timeout=CLIENT_TIMEOUT)
    return r.status_code == 200 and r.json().get("status") == "ok"


# ---- concurrency and correctness -------------------------------------------------------------
def test_64_concurrent_requests_complete_and_equal_offline_greedy(offline, server):
    """64 requests sent at once (mixed prompt lengths, max_tokens, streaming or not) through 4
    slots: all answered 200, none lost or cut short, and each greedy output equals the offline
    engine's for the same prompt."""
    rng = random.Random(0)
    cases = [([rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))], rng.randint(1, 20), i % 2 == 0)
             for i in range(64)]

    async def run_all():
        limits = httpx.Limits(max_connections=len(cases))
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as client:
            return await asyncio.gather(*[
                _complete(client, server.url, _greedy_body(p, n, stream=stream)) for p, n, stream in cases])

    results = asyncio.run(run_all())
    assert len(results) == len(cases)
    served = []
    for (prompt, n, stream), ((ids,), usage) in zip(cases, results):
        assert len(ids) == n, f"{'streamed' if stream else 'plain'} request got {len(ids)} tokens, asked {n}"
        assert all(0 <= t < VOCAB for t in ids)
        _check_usage(usage, [prompt], n)
        served.append(ids)
    reference = _offline_greedy(offline, [p for p, _, _ in cases], [n for _, n, _ in cases])
    mismatched = [i for i, (a, b) in enumerate(zip(served, reference)) if a != b]
    assert not mismatched, (f"served greedy outputs differ from offline for requests {mismatched}: "
                            + "; ".join(_divergence(offline, cases[i][0], served[i], reference[i])
                                        for i in mismatched[:3]))
    assert _health_ok(server.url)


def test_prompt_list_returns_one_choice_per_prompt(offline, server):
    """A list of prompts in one request (streamed and not): one choice per prompt, in order,
    equal to the offline outputs; usage sums over the prompts."""
    prompts = [[11, 12, 13], [400] * 30, [7]]
    reference = _offline_greedy(offline, prompts, [5] * len(prompts))

    async def both():
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            return await asyncio.gather(_complete(client, server.url, _greedy_body(prompts, 5)),
                                        _complete(client, server.url, _greedy_body(prompts, 5, stream=True)))

    for ids, usage in asyncio.run(both()):
        assert ids == reference
        _check_usage(usage, prompts, 5)


# ---- bad requests ---------------------------------------------------------------------------
_BAD_REQUESTS = [
    # (what, body (a dict/list is sent as JSON, a str as the raw body), status, message fragment)
    ("missing prompt", {"model": MODEL, "max_tokens": 4}, 400, "no 'prompt'"),
    ("invalid JSON body", '{"prompt": [1, 2', 400, "not valid JSON"),
    ("negative max_tokens", {"prompt": [1, 2], "max_tokens": -3}, 400,
     "max_tokens must be an integer from 1 to 2147483647, not -3"),
    ("fractional max_tokens", {"prompt": [1, 2], "max_tokens": 2.5}, 400, "max_tokens must be an integer"),
    ("string max_tokens", {"prompt": [1, 2], "max_tokens": "4"}, 400, "max_tokens must be an integer"),
    ("prompt longer than max_model_len", {"prompt": [3] * (MAX_LEN + 1), "max_tokens": 1}, 400,
     f"prompt of {MAX_LEN + 1} tokens exceeds max_model_len {MAX_LEN}"),
    ("prompt + max_tokens over max_model_len", {"prompt": [3] * 60, "max_tokens": 10}, 400,
     f"plus max_tokens 10 exceeds max_model_len {MAX_LEN}"),
    ("prompt + max_tokens over max_model_len, streamed",
     {"prompt": [3] * 60, "max_tokens": 10, "stream": True}, 400,
     f"plus max_tokens 10 exceeds max_model_len {MAX_LEN}"),
    ("token id past the vocabulary", {"prompt": [1, VOCAB], "max_tokens": 2}, 400,
     f"token id {VOCAB} is outside the vocabulary"),
    ("negative token id", {"prompt": [1, -1], "max_tokens": 2}, 400, "token id -1 is outside the vocabulary"),
    ("bad token id in the second prompt of a list", {"prompt": [[1, 2], [3, VOCAB + 5]], "max_tokens": 2},
     400, f"token id {VOCAB + 5} is outside the vocabulary"),
    ("empty prompt list", {"prompt": [], "max_tokens": 2}, 400, "non-empty"),
    ("empty prompt inside a list", {"prompt": [[1, 2], []], "max_tokens": 2}, 400, "non-empty"),
    ("deeply nested JSON body", "[" * 100_000, 400, "nests JSON deeper than 32 levels"),
    ("body is a JSON list", [{"prompt": [1, 2]}], 400, "must be a JSON object"),
    ("unsupported best_of", {"prompt": [1, 2], "best_of": 3}, 400, "best_of=3 is not supported"),
    ("n out of range", {"prompt": [1, 2], "n": 0}, 400, "n must be an integer from 1 to 128, not 0"),
    ("stop not a string", {"prompt": [1, 2], "stop": [3]}, 400, "stop must be a non-empty string"),
    ("unknown model", {"model": "no-such-model", "prompt": [1, 2]}, 404, "'no-such-model' does not exist"),
]


@pytest.mark.parametrize("what, body, status, fragment", _BAD_REQUESTS, ids=[b[0] for b in _BAD_REQUESTS])
def test_bad_request_gets_one_sentence_and_the_server_keeps_serving(server, what, body, status, fragment):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{server.url}/v1/completions", content=content,
                   headers={"content-type": "application/json"}, timeout=CLIENT_TIMEOUT)
    assert r.status_code == status, f"{what}: HTTP {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("application/json"), f"{what}: {r.headers['content-type']}"
    error = r.json()["error"]
    assert error["code"] == status
    message = error["message"]
    assert fragment in message, f"{what}: {message!r} does not name the problem ({fragment!r})"
    assert "\n" not in message and "Traceback" not in message, f"{what}: not one plain line: {message!r}"
    assert message.endswith(".") and ". " not in message, f"{what}: not one sentence: {message!r}"
    assert _health_ok(server.url), f"/health is not ok after a request with {what}"
    ok = httpx.post(f"{server.url}/v1/completions", json=_greedy_body([1, 2, 3], 2), timeout=CLIENT_TIMEOUT)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 2, \
        f"a good request after one with {what} failed: {ok.text}"


# ---- client disconnects ---------------------------------------------------------------------
def test_disconnected_stream_is_aborted(server):
    """Three clients take a slot each with a long stream and hang up after the first chunk; a
    fourth long stream (the witness) keeps reading. With the three aborted, a new request gets a
    freed slot at once and finishes while the witness is still early in its 63 tokens; were
    they left running, no slot would free until they had all but finished, as the witness has."""
    long = MAX_LEN - 1

    async def scenario():
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            witness_ids: list[int] = []
            witness_started = asyncio.Event()

            async def witness():
                async with client.stream("POST", f"{server.url}/v1/completions",
                                         json=_greedy_body([5], long, stream=True)) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            witness_ids.extend(json.loads(line[6:])["choices"][0]["token_ids"])
                            witness_started.set()

            witness_task = asyncio.create_task(witness())
            for _ in range(3):
                async with client.stream("POST", f"{server.url}/v1/completions",
                                         json=_greedy_body([5], long, stream=True)) as r:
                    assert r.status_code == 200
                    first = await anext(r.aiter_lines())
                    assert first.startswith("data: {") and json.loads(first[6:])["choices"][0]["token_ids"]
                # leaving the block closes the half-read response: the client is gone
            await witness_started.wait()
            probe = await client.post(f"{server.url}/v1/completions", json=_greedy_body([9, 8], 2))
            witness_at_probe = len(witness_ids)
            await witness_task
            return probe, witness_at_probe, witness_ids

    probe, witness_at_probe, witness_ids = asyncio.run(scenario())
    assert probe.status_code == 200 and len(probe.json()["choices"][0]["token_ids"]) == 2, probe.text
    assert witness_at_probe < long // 2, (
        f"the request after three disconnects finished only when the witness had {witness_at_probe} of "
        f"{long} tokens: the disconnected streams were not aborted")
    assert len(witness_ids) == long, "the witness stream was cut short"
    assert _health_ok(server.url)
    after = httpx.post(f"{server.url}/v1/completions", json=_greedy_body([9, 8], 2, stream=True, stream_options={"include_usage": True}),
                       timeout=CLIENT_TIMEOUT)
    assert after.status_code == 200, f"a stream after the disconnects: HTTP {after.status_code} {after.text}"
    ids, _, usage = _check_stream(_events(after.text), 1)
    assert len(ids[0]) == 2 and usage["completion_tokens"] == 2, f"a stream after the disconnects: {after.text}"
    assert "Traceback" not in server.log(), f"the server logged a traceback:\n{server.tail()}"


def _metrics(url) -> dict:
    """The figures the abort tests read, from vLLM's metric names."""
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT).text
    samples = {(s.name, s.labels.get("finished_reason")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    return {"num_requests_running": samples[("vllm:num_requests_running", None)],
            "num_requests_waiting": samples[("vllm:num_requests_waiting", None)],
            "generation_tokens_total": samples[("vllm:generation_tokens_total", None)],
            "requests_aborted_total": samples[("vllm:request_success_total", "abort")],
            "requests_finished_total": samples[("vllm:request_success_total", "stop")]
            + samples[("vllm:request_success_total", "length")]}


def test_a_top_k_beyond_int64_is_served_and_the_engine_lives_on(server):
    """top_k 2**63 once overflowed on the engine thread and killed the server for good."""
    for top_k in (2**63, 10**30):
        r = httpx.post(f"{server.url}/v1/completions", timeout=CLIENT_TIMEOUT,
                       json={**_greedy_body([1, 2, 3], 3), "temperature": 1.0, "top_k": top_k, "seed": 3})
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"][0]["token_ids"]) == 3
    assert _health_ok(server.url)


def test_disconnected_plain_request_is_aborted(server):
    """Three clients send a long non-streamed request and hang up once it runs: the server
    aborts all three (its /metrics counts them) instead of decoding them to the end."""
    long = MAX_LEN - 1
    host, port = server.url.rsplit("//", 1)[1].split(":")
    before = _metrics(server.url)

    async def scenario():
        body = json.dumps(_greedy_body([5], long)).encode()
        writers = []
        for _ in range(3):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writers.append(writer)

        def all_admitted():
            m = _metrics(server.url)
            return m["num_requests_running"] + m["requests_finished_total"] - before["requests_finished_total"] >= 3
        wait_until(all_admitted, 60, "all three requests to hold a slot", poll_s=0.02)
        for writer in writers:
            writer.close()                    # the clients go away mid-generation
    asyncio.run(scenario())

    def idle():
        m = _metrics(server.url)
        return m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0
    wait_until(idle, 60, "the engine to drop the three requests")
    after = _metrics(server.url)
    assert after["requests_aborted_total"] - before["requests_aborted_total"] == 3, (before, after)
    assert after["requests_finished_total"] == before["requests_finished_total"], (before, after)
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < 3 * long
    assert _health_ok(server.url)


def test_profile_endpoints_without_a_capture_dir_say_how_to_configure_it(server):
    for path in ("/start_profile", "/stop_profile"):
        r = httpx.post(f"{server.url}{path}", timeout=CLIENT_TIMEOUT)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == ("profiling is not configured: start the server with "
                                                "VLLM_TORCH_PROFILER_DIR set to a directory for the captures.")
    assert _health_ok(server.url)


# ---- models ---------------------------------------------------------------------------------
def test_models_lists_the_served_model(server):
    r = httpx.get(f"{server.url}/v1/models", timeout=CLIENT_TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in body["data"]] == [(MODEL, "model", MAX_LEN)]


# ---- text prompts with a tokenizer ----------------------------------------------------------
def test_text_prompts_with_a_tokenizer(words):
    """A model dir with tokenizer.json takes text prompts: the same tokens as the token-id
    prompt, text decoded from token_ids, echo prepends the prompt, logprobs name tokens."""
    srv, tok = words.words, words.tokenizer
    models = httpx.get(f"{srv.url}/v1/models", timeout=CLIENT_TIMEOUT).json()["data"]
    assert [m["id"] for m in models] == [WORDS_MODEL], "--served-model-name is not the listed model"
    prompt = "w5 w7 w9 w300"
    prompt_ids = tok.encode(prompt).ids
    assert prompt_ids == [5, 7, 9, 300]

    def post(body):
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": WORDS_MODEL, "max_tokens": 6,
                                                          "temperature": 0, "ignore_eos": True, **body},
                       timeout=CLIENT_TIMEOUT)
        assert r.status_code == 200, f"{body}: HTTP {r.status_code} {r.text}"
        return r.json()

    text = post({"prompt": prompt})
    ids = text["choices"][0]["token_ids"]
    assert len(ids) == 6 and all(0 <= t < WORDS_VOCAB for t in ids)
    assert text["usage"]["prompt_tokens"] == len(prompt_ids)
    assert text["choices"][0]["text"] == tok.decode(ids, skip_special_tokens=True)
    assert text["choices"][0]["text"], "the completion text is empty"

    by_ids = post({"prompt": prompt_ids})
    assert by_ids["choices"][0]["token_ids"] == ids, "a text prompt and its token ids give different outputs"
    assert by_ids["choices"][0]["text"] == text["choices"][0]["text"]

    echoed = post({"prompt": prompt, "echo": True})
    assert echoed["choices"][0]["token_ids"] == ids
    assert echoed["choices"][0]["text"] == prompt + text["choices"][0]["text"]
    echoed_ids = post({"prompt": prompt_ids, "echo": True})
    assert echoed_ids["choices"][0]["text"] == tok.decode(prompt_ids) + text["choices"][0]["text"]

    with_logprobs = post({"prompt": prompt, "logprobs": 2})
    logprobs = with_logprobs["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [tok.id_to_token(t) for t in ids]
    assert all(name in top for name, top in zip(logprobs["tokens"], logprobs["top_logprobs"]))

    r = httpx.post(f"{srv.url}/v1/completions",
                   json={"model": WORDS_MODEL, "prompt": [prompt, "w11 w12"], "max_tokens": 3, "temperature": 0,
                         "ignore_eos": True, "stream": True, "echo": True,
                         "stream_options": {"include_usage": True}}, timeout=CLIENT_TIMEOUT)
    assert r.status_code == 200, r.text
    events = _events(r.text)
    stream_ids, _, usage = _check_stream(events, 2)
    assert stream_ids[0] == ids[:3], "streamed text prompt gives other tokens than the plain request"
    assert usage["prompt_tokens"] == len(prompt_ids) + 2
    firsts = {}
    for chunk in events[:-2]:
        firsts.setdefault(chunk["choices"][0]["index"], chunk["choices"][0]["text"])
    assert firsts[0].startswith(prompt) and firsts[1].startswith("w11 w12"), f"echo in streams: {firsts}"
    joined = "".join(c["choices"][0]["text"] for c in events[:-2] if c["choices"][0]["index"] == 0)
    plain = post({"prompt": prompt, "max_tokens": 3})["choices"][0]["text"]
    assert joined == prompt + plain, "the streamed chunks' text does not join up to the whole text"
    assert _health_ok(srv.url)


def test_chat_uses_the_model_chat_template(words):
    """The model dir's tokenizer_config.json template renders the prompt (with its own BOS, no
    second one); a conversation it refuses is a 400 with one sentence, and serving goes on."""
    srv, tok = words.words, words.tokenizer
    body = {"model": WORDS_MODEL, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "w5 w7"}, {"role": "assistant", "content": "w9"},
                         {"role": "user", "content": "w300"}]}
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT)
    assert r.status_code == 200, r.text
    prompt = tok.encode("<s>w10 w5 w7 w11 w9 w10 w300 w11", add_special_tokens=False).ids
    plain = httpx.post(f"{srv.url}/v1/completions", timeout=CLIENT_TIMEOUT,
                       json={k: v for k, v in body.items() if k != "messages"} | {"prompt": prompt}).json()
    choice = r.json()["choices"][0]
    assert r.json()["usage"]["prompt_tokens"] == len(prompt) == 9
    assert choice["token_ids"] == plain["choices"][0]["token_ids"]
    assert choice["message"]["content"] == plain["choices"][0]["text"]
    bad = httpx.post(f"{srv.url}/v1/chat/completions", timeout=CLIENT_TIMEOUT,
                     json={**body, "messages": [{"role": "system", "content": "w5"}]})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == ("the chat template cannot render these messages (System messages "
                                              "are not supported by this template).")
    assert _health_ok(srv.url)
