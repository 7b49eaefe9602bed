"""One request must never stall or starve the others, nor reach what it should not: one live
JAX server (the smallest: one 16-token slot) with vLLM's --api-key, a waiting queue of 4, a 2 MB
body limit, XLA captures bounded to 6 steps or 4 s, driven by hostile requests, real clients
(the `openai` package) and the Prometheus parser. /health answers within 1 s while each heavy
request runs; no answer holds an absolute path; no traceback reaches the log; SIGTERM with a
capture open saves it."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability import fill, small_tmpfs
from tests.servers import JAX, Server, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.server]
KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ARGS = ["--max-model-len", "16", "--max-num-seqs", "1", *JAX, "--api-key", KEY,
        "--max-waiting-queue-length", "4", "--max-request-bytes", "2000000", "--enable-prompt-logprobs"]
LIMIT_STEPS, LIMIT_S = 6, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    env = {"VLLM_TORCH_PROFILER_DIR": tmp / "xla", "VLLM_PROFILER_MAX_ITERS": LIMIT_STEPS,
           "PROFILING_MAX_CAPTURE_S": LIMIT_S}
    srv = Server(ARGS, env=env, log_path=str(tmp / "server.log")).start()
    srv.tmp, srv.answers = tmp, []

    def record(r: httpx.Response) -> None:  # every whole answer, to check for paths at the end
        if "text/event-stream" not in r.headers.get("content-type", ""):
            r.read()
            srv.answers.append(r.text)
    srv.http = httpx.Client(base_url=srv.url, headers=AUTH, timeout=120, event_hooks={"response": [record]})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.http.close()
        srv.stop()


def _post(srv, route, body, **kw) -> httpx.Response:
    """Raw JSON (lone surrogates survive json.dumps' escapes), with the key."""
    return srv.http.post(route, content=json.dumps(body), headers={"content-type": "application/json"}, **kw)


def _message(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, f"HTTP {r.status_code}: {r.text[:300]}"
    error = r.json()["error"]
    assert error["code"] == status
    message = error["message"]
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", message)
    assert message.endswith(".") and "\n" not in message and ". " not in bare[:-1], message
    return message


def _health_ok(srv) -> None:
    r = srv.http.get("/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text


# ---- bounds: each a 400 naming it ------------------------------------------------------------
CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
NESTED = json.loads("[" * 950 + "]" * 950)
_REFUSED = [
    ("10,000 stop strings", CMPL, {"prompt": [1], "stop": ["x"] * 10_000}, "stop holds 10000 strings; at most 64"),
    ("2,000 stop strings of 500 chars", CMPL, {"prompt": [1], "stop": ["y" * 500] * 2_000}, "at most 64"),
    ("a stop string of 500 chars", CMPL, {"prompt": [1], "stop": ["y" * 500]}, "of 500 characters is over the limit of 256"),
    ("stop nested 950 deep", CMPL, {"prompt": [1], "stop": NESTED}, "nests JSON deeper than 32 levels"),
    ("1,000 prompts x n=128", CMPL, {"prompt": [[1]] * 1000, "n": 128}, "128000 sequences; at most 256"),
    ("5 sequences, queue of 4", CMPL, {"prompt": [[1]] * 5, "max_tokens": 2}, "more than the waiting queue holds"),
    ("a lone surrogate", CMPL, {"prompt": "a\ud800b"}, "lone surrogate (U+D800) in the prompt at character 1"),
    ("a lone surrogate in chat", CHAT, {"messages": [{"role": "user", "content": "x\udfff"}]}, "lone surrogate (U+DFFF)"),
    ("an empty prompt", CMPL, {"prompt": ""}, "the prompt is an empty string"),
    ("json_object", CMPL, {"prompt": [1], "response_format": {"type": "json_object"}}, "response_format="),
    ("json_schema", CHAT, {"messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
     "structured output is not implemented"),
    ("tools", CHAT, {"messages": [{"role": "user", "content": "x"}],
                     "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool calling is not implemented"),
    ("tool_choice required", CHAT, {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
     "tool_choice='required' is not supported"),
]


@pytest.mark.parametrize("what, route, body, fragment", _REFUSED, ids=[c[0] for c in _REFUSED])
def test_what_a_request_may_carry_is_bounded_with_a_400_naming_it(server, what, route, body, fragment):
    assert fragment in _message(_post(server, route, body)), what
    _health_ok(server)


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(server):
    r = server.http.post(CMPL, content=b'{"prompt": "' + b"a" * 50_000_000 + b'"}',
                         headers={"content-type": "application/json"})
    assert "over the limit of 2000000 bytes (--max-request-bytes)" in _message(r)


def test_neutral_values_of_refused_fields_are_served(server):
    r = _post(server, CHAT, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                             "response_format": {"type": "text"}, "tools": [], "tool_choice": "none"})
    assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) == 2, r.text


# ---- liveness: /health within 1 s while each heavy request runs ------------------------------
_HEAVY = [
    ("a 1.9 MB text prompt (tokenized, then too long)", {"prompt": "word " * 380_000, "max_tokens": 1}, 400),
    ("64 stop strings of 256 characters, streamed", {"prompt": [1, 2], "max_tokens": 14, "stream": True,
                                                     "ignore_eos": True, "stop": [f"{i:03d}" * 85 for i in range(64)]}, 200),
    ("4 sequences of 14 tokens", {"prompt": [[1, 2]] * 4, "max_tokens": 14, "ignore_eos": True}, 200),
]


@pytest.mark.parametrize("what, body, status", _HEAVY, ids=[h[0] for h in _HEAVY])
def test_health_answers_within_a_second_while_a_heavy_request_runs(server, what, body, status):
    done, result = threading.Event(), {}

    def heavy():
        result["r"] = _post(server, CMPL, body)
        done.set()
    threading.Thread(target=heavy, daemon=True).start()
    answered = 0
    while not done.is_set():
        r = httpx.get(f"{server.url}/health", timeout=1.0)   # a stalled loop fails here
        assert r.status_code == 200
        answered += 1
    assert result["r"].status_code == status, result["r"].text[:300]
    if status == 400:  # the slow one: the loop answered while its prompt was tokenized
        assert answered >= 1 and "exceeds max_model_len 16" in result["r"].text


# ---- the waiting queue and clients that leave ------------------------------------------------
def _metric(srv, name: str) -> float:
    text = srv.http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_full_queue_is_a_503_with_retry_after_and_frees_as_it_drains(server):
    """Four sequences hold the queue (one slot runs them in turn); while the last still waits,
    another request is refused with 503 and Retry-After, and served once the queue drained."""
    body = {"prompt": [[3, 4]] * 4, "max_tokens": 14, "ignore_eos": True, "stream": True}
    with server.http.stream("POST", CMPL, json=body) as first:
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))   # the first sequence runs
        busy = _post(server, CMPL, {"prompt": [[5]] * 4, "max_tokens": 2})
        assert busy.headers["retry-after"] == "1"
        assert "the server is busy" in _message(busy, 503) and "--max-waiting-queue-length" in busy.text
        assert sum(1 for line in lines if line == "data: [DONE]") == 1
    again = _post(server, CMPL, {"prompt": [[5]] * 4, "max_tokens": 2})
    assert again.status_code == 200 and len(again.json()["choices"]) == 4


def test_a_client_that_leaves_has_every_sequence_aborted(server):
    before = _metric(server, "vllm:request_success_total")
    body = {"prompt": [[6, 7]] * 4, "max_tokens": 14, "ignore_eos": True, "stream": True}
    with server.http.stream("POST", CMPL, json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data: {"))
    # (leaving the block closes the connection mid-stream)
    wait_until(lambda: _metric(server, "vllm:num_requests_waiting") == 0 and
               _metric(server, "vllm:num_requests_running") == 0, 30, "the engine to drop the sequences")
    aborted = [s for f in text_string_to_metric_families(server.http.get("/metrics").text) for s in f.samples
               if s.name == "vllm:request_success_total" and s.labels["finished_reason"] == "abort"]
    assert aborted and _metric(server, "vllm:request_success_total") == before + 4
    r = _post(server, CMPL, {"prompt": [8], "max_tokens": 4, "ignore_eos": True})   # served at once
    assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) == 4


def test_a_client_that_vanishes_mid_body_is_one_line_in_the_log(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 5000\r\n\r\n{\"prompt\": [1")
        time.sleep(0.2)  # the server is reading the body when the client goes
    wait_until(lambda: "disconnected before its request was read" in server.log(), 30, "the one-line note")
    _health_ok(server)


# ---- vLLM's API key ---------------------------------------------------------------------------
@pytest.mark.parametrize("method, route", [("POST", CMPL), ("GET", "/v1/models"), ("POST", "/tokenize"),
                                           ("POST", "/start_profile"), ("POST", "/stop_profile")])
def test_without_the_key_every_private_route_is_401(server, method, route):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.request(method, f"{server.url}{route}", headers=headers, json={}, timeout=30)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}, (headers, r.text)


def test_health_version_metrics_and_the_schema_need_no_key(server):
    for route in ("/health", "/version", "/metrics", "/openapi.json"):
        assert httpx.get(f"{server.url}{route}", timeout=30).status_code == 200, route


def test_the_openai_client_needs_the_key_and_gets_plain_refusals(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    assert client.completions.create(model=client.models.list().data[0].id, prompt="Hi", max_tokens=2).usage
    with pytest.raises(openai.BadRequestError, match="response_format=.* is not supported"):
        client.chat.completions.create(model="tpu-engine/tiny-llama", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match=r"tools=.* \(tool calling is not implemented"):
        client.chat.completions.create(model="tpu-engine/tiny-llama", messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="the prompt is an empty string"):
        client.completions.create(model="tpu-engine/tiny-llama", prompt="", max_tokens=2)


# ---- vLLM's utility routes and metrics, through the openai client ----------------------------
def test_version_tokenize_and_detokenize_as_vllm_answers_them(server):
    root = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)
    assert root.get("/version", cast_to=object) == {"version": "0.1.0"}
    tok = root.post("/tokenize", cast_to=object, body={"prompt": "Hello café", "return_token_strs": True})
    assert set(tok) == {"count", "max_model_len", "tokens", "token_strs"} and tok["max_model_len"] == 16
    assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"]) and tok["tokens"][0] == 1  # <s>
    assert root.post("/detokenize", cast_to=object, body={"tokens": tok["tokens"]}) == {"prompt": "Hello café"}
    chat = root.post("/tokenize", cast_to=object, body={"messages": [{"role": "user", "content": "Hi"}]})
    served = _post(server, CHAT, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).json()
    assert chat["count"] == served["usage"]["prompt_tokens"] and chat["token_strs"] is None
    for body, fragment in [({"tokens": [1, 10**6]}, "outside the vocabulary"), ({"tokens": "abc"}, "tokens must be"),
                           ({"model": "nope", "tokens": [1]}, "does not exist")]:
        with pytest.raises(openai.APIStatusError, match=fragment):
            root.post("/detokenize", cast_to=object, body=body)
    assert "lone surrogate (U+D800) in the prompt" in _message(_post(server, "/tokenize", {"prompt": "\ud800"}))


def test_metrics_have_vllms_cache_step_and_preemption_series(server):
    families = {f.name: f for f in text_string_to_metric_families(server.http.get("/metrics").text)}
    for name in ("vllm:kv_cache_usage_perc", "vllm:time_per_output_token_seconds", "vllm:num_preemptions",
                 "vllm:iteration_tokens_total"):
        assert name in families, sorted(families)
    steps = _metric(server, "tpu_engine:engine_steps_total")
    assert _metric(server, "vllm:iteration_tokens_total_count") == steps > 0
    assert _metric(server, "vllm:num_preemptions_total") == 0
    assert _metric(server, "vllm:time_per_output_token_seconds_count") == \
        _metric(server, "vllm:inter_token_latency_seconds_count") > 0
    assert 0 <= _metric(server, "vllm:kv_cache_usage_perc") <= 1


def test_lm_evals_loglikelihood_request_scores_the_prompt(server):
    """lm-eval's multiple-choice requests (echo, logprobs=1, max_tokens=1, token-id prompts)
    through the openai client: the prompt's tokens lead the logprob lists (None first), and a
    continuation's logprob in the echoed prompt equals the sampler's logprob when the same
    token is generated greedily."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    context = [1, 40, 41, 42]
    gen = client.completions.create(model="tpu-engine/tiny-llama", prompt=context, max_tokens=1, temperature=0,
                                    logprobs=1)
    greedy = gen.choices[0].model_extra["token_ids"][0]
    generated_lp = gen.choices[0].logprobs.token_logprobs[0]
    out = client.completions.create(model="tpu-engine/tiny-llama", prompt=[context + [greedy], context + [7]],
                                    max_tokens=1, temperature=0, logprobs=1, echo=True)
    for choice, last in zip(out.choices, (greedy, 7)):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(context) + 2
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
        assert choice.model_extra["prompt_token_ids"] == context + [last]
    scored, top = out.choices[0].logprobs.token_logprobs[len(context)], out.choices[0].logprobs.top_logprobs[len(context)]
    assert abs(scored - generated_lp) < 1e-4 and abs(max(top.values()) - scored) < 1e-6   # lm-eval's is_greedy
    assert out.choices[1].logprobs.token_logprobs[len(context)] <= scored


# ---- the profiling routes: same origin, bounded, no paths -------------------------------------
@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": "evil.example:8000"},
                                     {"Origin": "http://evil.example"}, {"Origin": "null"}])
def test_profiling_routes_refuse_foreign_hosts_and_origins(server, headers):
    for route in ("/start_profile", "/stop_profile"):
        message = _message(server.http.post(route, headers=headers), 403)
        assert ("does not name this server" if "Host" in headers else "a cross-origin request") in message
    assert server.http.post("/stop_profile").status_code == 409     # nothing was started


def test_an_open_capture_stops_by_itself_at_its_step_limit(server):
    assert server.http.post("/start_profile").status_code == 200
    r = _post(server, CMPL, {"prompt": [1, 2], "max_tokens": 10, "ignore_eos": True})
    assert r.status_code == 200
    wait_until(lambda: f"reached its limit of {LIMIT_STEPS} engine steps" in server.log(), 30, "the step limit")
    saved = server.http.post("/stop_profile", timeout=300)
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["stopped_by"] == f"limit: {LIMIT_STEPS} engine steps (VLLM_PROFILER_MAX_ITERS={LIMIT_STEPS})"
    assert body["num_steps"] == LIMIT_STEPS and body["run"].startswith("plugins/profile/")
    assert os.path.isdir(server.tmp / "xla" / body["run"])
    assert server.http.post("/stop_profile").status_code == 409      # its answer was given once


def test_an_idle_capture_stops_by_itself_at_its_time_limit(server):
    assert server.http.post("/start_profile").status_code == 200
    wait_until(lambda: f"reached its limit of {LIMIT_S} s" in server.log(), 60, "the time limit")
    answer = server.http.post("/stop_profile", timeout=300)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["stopped_by"] == f"limit: {LIMIT_S} s (PROFILING_MAX_CAPTURE_S={LIMIT_S})" and body["num_steps"] == 0


def test_a_full_or_read_only_profile_dir_is_a_507_sentence(server):
    with small_tmpfs(str(server.tmp / "xla"), "1m") as disk:
        fill(disk, 16 << 10)   # room for the staging dir, not for the capture
        assert server.http.post("/start_profile").status_code == 200
        _post(server, CMPL, {"prompt": [1], "max_tokens": 2})
        full = server.http.post("/stop_profile", timeout=300)
        assert "the capture could not be saved" in _message(full, 507) and str(disk) not in full.text
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        ro = server.http.post("/start_profile")
        assert "cannot be written now" in _message(ro, 507)
    _health_ok(server)


def test_no_answer_holds_a_server_path_and_the_log_holds_no_traceback(server):
    assert server.answers, "the module's answers were recorded"
    for text in server.answers:
        assert str(server.tmp) not in text and os.path.dirname(os.path.abspath(__file__)) not in text, text[:300]
    assert "Traceback" not in server.log(), server.tail()


def test_sigterm_with_a_capture_open_saves_it(server):
    """Last: containers and systemd stop servers with SIGTERM; it takes SIGINT's path."""
    runs = set(os.listdir(server.tmp / "xla" / "plugins" / "profile"))
    assert server.http.post("/start_profile").status_code == 200
    _post(server, CMPL, {"prompt": [2, 3], "max_tokens": 3})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.tail()
    new = set(os.listdir(server.tmp / "xla" / "plugins" / "profile")) - runs
    assert len(new) == 1 and "Capture (open at shutdown)" in server.log(), server.tail()
    assert "Traceback" not in server.log()
