"""Hostile input against one live server, the smallest that serves (one 16-token slot), with the
service profiler collecting and three broken handlers on engine methods (tests/reliability_handlers.py):
numbers that once reached a tensor, a step that raises, handlers that raise, insane config
values, a moved output_dir, and Schemathesis fuzzing from the server's own /openapi.json. After
every case /health is green and every background thread (engine, collector writer, config
watcher) is alive."""
from __future__ import annotations

import collections
import concurrent.futures
import glob
import json
import os
import re

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from tests.reliability_handlers import POISON_PROMPT, POISON_SEED
from tests.servers import Server, switch_collection, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.server]

ARGS = ["--max-model-len", "16", "--max-num-seqs", "1"]
THREADS = ("engine", "service-profiler-config", "service-profiler-writer")
SYMBOLS = """
- symbol: tpu_engine.engine:LLMEngine.step
  domain: Hostile
  handler: tests.reliability_handlers:raise_before
- symbol: tpu_engine.engine:LLMEngine.add_request
  domain: Hostile
  handler: tests.reliability_handlers:raise_after
- symbol: tpu_engine.engine:LLMEngine._row
  domain: Hostile
  handler: tests.reliability_handlers:poison_row
"""
CONFIG = {"enable": 1, "output_dir": "events", "domains": [], "poll_interval_ms": 50, "flush_interval_ms": 50}
FUZZ_EXAMPLES = 20   # per operation and phase; see test_fuzzed_requests_never_get_a_5xx
FUZZED: collections.Counter = collections.Counter()   # (phase, generation mode) -> cases sent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    (tmp / "symbols.yaml").write_text(SYMBOLS)
    (tmp / "config.json").write_text(json.dumps(CONFIG))
    env = {"SERVICE_PROF_CONFIG_PATH": tmp / "config.json", "PROFILING_SYMBOLS_PATH": tmp / "symbols.yaml",
           "PROFILING_HANDLERS": ",".join(f"tests.reliability_handlers:{h}" for h in
                                          ("raise_before", "raise_after", "poison_row"))}
    with Server(ARGS, env=env) as srv, httpx.Client(base_url=srv.url, timeout=120) as http, \
            requests.Session() as session:   # kept-alive connections: the fuzz sends hundreds of cases
        srv.tmp, srv.http, srv.session = tmp, http, session
        yield srv


def assert_serving(srv: Server, after) -> dict:
    """/health is 200 "ok" and names every background thread alive."""
    r = srv.http.get("/health")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok", f"after {after}: HTTP {r.status_code} {body}"
    dead = [name for name in THREADS if body["threads"].get(name) != "alive"]
    assert not dead, f"after {after}: threads {dead} are not alive: {body['threads']}"
    return body


def assert_sentence(message: str, *fragments: str) -> None:
    """One plain sentence (quoted values may hold anything), naming each fragment."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", message)
    assert message.endswith(".") and "\n" not in message and ". " not in bare[:-1], repr(message)
    assert "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _post(srv, route, body, **kw) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{srv.url}{route}", content=body, headers={"content-type": "application/json"},
                          timeout=120, **kw)
    return httpx.post(f"{srv.url}{route}", json=body, timeout=120, **kw)


def _complete(srv, **body) -> dict:
    r = _post(srv, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3, "ignore_eos": True, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _spans(root) -> list[dict]:
    out = []
    for path in glob.glob(os.path.join(root, "**", "events.jsonl"), recursive=True):
        with open(path) as f:
            out += [e for e in map(json.loads, f) if e["type"] == "span"]
    return out


def _write_config(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETIONS, CHATS = "/v1/completions", "/v1/chat/completions"
_HOSTILE = [
    # (what, route, body (a str is sent raw), fragment of the 400's sentence)
    ("top_k -2", COMPLETIONS, {"prompt": [1, 2], "top_k": -2}, "top_k must be -1 or 0 (off) or a positive integer"),
    ("seed of 4001 digits", COMPLETIONS, {"prompt": [1, 2], "max_tokens": 2, "seed": 10**4000},
     "must be an integer of at most 4000 digits"),
    ("max_tokens 2^63", COMPLETIONS, {"prompt": [1, 2], "max_tokens": 2**63}, "max_tokens must be an integer from 1"),
    ("max_tokens of 5000 digits", COMPLETIONS, '{"prompt": [1, 2], "max_tokens": ' + "9" * 5000 + "}",
     "a number too long to read"),
    ("logprobs 2^63", COMPLETIONS, {"prompt": [1, 2], "logprobs": 2**63}, "logprobs must be an integer from 0 to 20"),
    ("logprobs -1", COMPLETIONS, {"prompt": [1, 2], "logprobs": -1}, "logprobs must be an integer from 0 to 20"),
    ("n 2^63", COMPLETIONS, {"prompt": [1, 2], "n": 2**63}, "n must be an integer from 1 to 128"),
    ("token id 2^63", COMPLETIONS, {"prompt": [1, 2**63]}, "token id 9223372036854775808 is outside the vocabulary"),
    ("token id -2^63-1", COMPLETIONS, {"prompt": [[1], [-2**63 - 1]], "max_tokens": 2}, "is outside the vocabulary"),
    ("stop token id 2^63", COMPLETIONS, {"prompt": [1, 2], "stop_token_ids": [2**63]}, "stop_token_ids must be"),
    ("temperature NaN", COMPLETIONS, '{"prompt": [1, 2], "temperature": NaN}', "temperature must be a finite number"),
    ("temperature Infinity", COMPLETIONS, '{"prompt": [1, 2], "temperature": Infinity}', "temperature must be a finite"),
    ("temperature of 400 digits", COMPLETIONS, '{"prompt": [1, 2], "temperature": 1' + "0" * 400 + "}",
     "temperature must be a finite number, not an integer of 401 digits"),
    ("temperature -1", COMPLETIONS, {"prompt": [1, 2], "temperature": -1}, "temperature -1 must be"),
    ("top_p NaN", COMPLETIONS, '{"prompt": [1, 2], "top_p": NaN}', "top_p must be a finite number"),
    ("top_p 1e300", COMPLETIONS, {"prompt": [1, 2], "top_p": 1e300}, "top_p 1e+300 must be in (0, 1]"),
    ("include_usage 'no'", COMPLETIONS, {"prompt": [1, 2], "stream": True, "stream_options": {"include_usage": "no"}},
     "stream_options.include_usage must be true or false, not 'no'"),
    ("include_usage 1", COMPLETIONS, {"prompt": [1, 2], "stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage must be true or false"),
    ("chat top_logprobs 2^63", CHATS, {**CHAT, "logprobs": True, "top_logprobs": 2**63},
     "top_logprobs must be an integer from 0 to 20"),
    ("chat max_completion_tokens 2^63", CHATS, {**CHAT, "max_completion_tokens": 2**63},
     "max_completion_tokens must be an integer from 1"),
    ("chat top_k 1.5", CHATS, {**CHAT, "top_k": 1.5}, "top_k must be -1 or 0 (off) or a positive integer, not 1.5"),
    ("chat temperature NaN", CHATS, json.dumps({**CHAT, "temperature": float("nan")}), "temperature must be a finite"),
    ("chat logprobs 'yes'", CHATS, {**CHAT, "logprobs": "yes"}, "logprobs must be true or false"),
]


@pytest.mark.parametrize("what, route, body, fragment", _HOSTILE, ids=[h[0] for h in _HOSTILE])
def test_hostile_numbers_get_a_400_sentence_and_the_engine_lives(server, what, route, body, fragment):
    r = _post(server, route, body)
    assert r.status_code == 400, f"{what}: HTTP {r.status_code} {r.text[:300]}"
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert_sentence(error["message"], fragment)
    assert_serving(server, what)


@pytest.mark.parametrize("field, value", [("top_k", 2**63), ("top_k", 10**4000), ("seed", 2**64),
                                          ("seed", -2**63 - 1), ("seed", 10**3999)])
def test_huge_top_k_and_seed_are_served_without_reaching_a_tensor(server, field, value):
    """A top_k of the vocabulary or more is off and a seed of any size is hashed (engine.py);
    top_k 2**63 once overflowed an int64 tensor and killed the engine thread for good."""
    out = _complete(server, temperature=1.0, **{field: value})
    assert len(out["choices"][0]["token_ids"]) == 3
    assert_serving(server, f"{field} of {len(str(value))} digits")


def test_the_engine_serves_on_after_the_hostile_requests(server):
    out = _complete(server, max_tokens=4, temperature=0)
    assert len(out["choices"][0]["token_ids"]) == 4
    r = _post(server, COMPLETIONS, {"prompt": [1, 2], "max_tokens": 2, "stream": True,
                                     "stream_options": {"include_usage": True}})
    usage = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")][-1]["usage"]
    assert usage["completion_tokens"] == 2


def test_a_step_that_raises_fails_its_own_request_and_the_engine_serves_on(server):
    before = assert_serving(server, "start")["failed_steps"]
    poison = {"prompt": POISON_PROMPT, "max_tokens": 3, "seed": POISON_SEED}
    r = _post(server, COMPLETIONS, poison)
    assert r.status_code == 500, r.text
    assert_sentence(r.json()["error"]["message"], "the engine failed while running this request")
    streamed = _post(server, COMPLETIONS, {**poison, "stream": True}).text
    events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["error"]["code"] == 500 and events[-1] == "[DONE]", streamed
    # the poisoned request and a good one at once: only the poisoned one fails
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bad = pool.submit(_post, server, COMPLETIONS, poison)
        good = pool.submit(_post, server, COMPLETIONS, {"prompt": [2, 7], "max_tokens": 4, "ignore_eos": True})
        assert bad.result().status_code == 500 and good.result().status_code == 200, good.result().text
    assert len(good.result().json()["choices"][0]["token_ids"]) == 4
    body = assert_serving(server, "three failed steps")
    assert body["failed_steps"] == before + 3 and "AttributeError" in body["last_failure"]
    assert server.log().count("request(s) fail and the engine goes on") == before + 3


def test_raising_profiler_handlers_are_recorded_once_and_the_calls_proceed(server):
    cfg = server.tmp / "config.json"
    for _ in range(3):
        out = _complete(server, max_tokens=3)   # add_request ran once: a second run would refuse the id
        assert len(out["choices"][0]["token_ids"]) == 3
    log = server.log()
    assert log.count("handler tests.reliability_handlers:raise_before of tpu_engine.engine:LLMEngine.step "
                     "raised RuntimeError: handler failed before the call") == 1, log[-3000:]
    assert log.count("tests.reliability_handlers:raise_after of tpu_engine.engine:LLMEngine.add_request") == 1
    switch_collection(server, cfg, 0)             # everything recorded is on disk now
    errors = [s for s in _spans(server.tmp) if "handler.error" in s["attrs"]]
    assert {s["name"] for s in errors} == {"LLMEngine.step", "LLMEngine.add_request"}
    assert len(_complete(server)["choices"][0]["token_ids"]) == 3     # off: the plain call
    switch_collection(server, cfg, 1)             # and on again: the handlers run, the engine serves
    assert len(_complete(server)["choices"][0]["token_ids"]) == 3
    switch_collection(server, cfg, 0)
    assert len([s for s in _spans(server.tmp) if "handler.error" in s["attrs"]]) > len(errors)
    switch_collection(server, cfg, 1)
    assert_serving(server, "collection switched off and on")


_BAD_CONFIGS = [
    ('"poll_interval_ms": NaN', "poll_interval_ms=nan must be a number of milliseconds from 10 to 60000"),
    ('"flush_interval_ms": Infinity', "flush_interval_ms=inf must be a number of milliseconds"),
    ('"flush_interval_ms": 1e300', "flush_interval_ms=1e+300 must be a number of milliseconds"),
    ('"poll_interval_ms": -5', "poll_interval_ms=-5 must be a number of milliseconds"),
    ('"enable": NaN', "enable=nan must be 0 or 1"),
    ('"output_dir": ""', "output_dir='' must be a directory path"),
    ('"domains": "all"', "domains='all' must be a list of names"),
]


def test_insane_config_values_are_refused_and_the_watcher_applies_the_next_good_one(server):
    cfg = server.tmp / "config.json"
    good = json.load(open(cfg))
    for text, message in _BAD_CONFIGS:
        _write_config(cfg, json.dumps(good)[:-1] + ", " + text + "}")
        wait_until(lambda: message in server.log(), 30, f"the server to refuse {text}")
        assert_serving(server, text)
    stopped = server.log().count("collection stopped")
    _write_config(cfg, json.dumps({**good, "enable": 0}))   # the watcher lived through them all
    wait_until(lambda: server.log().count("collection stopped") > stopped, 30, "the next good config to apply")
    switch_collection(server, cfg, 1)
    assert_serving(server, "the bad configs")


def test_a_changed_output_dir_is_applied_or_reported(server):
    cfg = server.tmp / "config.json"
    moved = server.tmp / "moved"
    _write_config(cfg, json.dumps({**CONFIG, "output_dir": "moved"}))
    wait_until(lambda: f"collecting into {moved}{os.sep}" in server.log(), 30, "collection to move")
    _complete(server, prompt=[9, 9, 9])
    (server.tmp / "a_file").write_text("")
    _write_config(cfg, json.dumps({**CONFIG, "output_dir": "a_file/sub"}))
    wait_until(lambda: "a_file/sub cannot be written (Not a directory); still collecting into "
               f"{moved}" in server.log(), 30, "the unwritable output_dir to be reported")
    _complete(server, prompt=[8, 8, 8])
    switch_collection(server, cfg, 0)
    moved_spans = _spans(moved)
    assert sum(s["name"] == "LLMEngine.add_request" for s in moved_spans) == 2, moved_spans[-3:]
    _write_config(cfg, json.dumps(CONFIG))
    wait_until(lambda: "collecting into " + str(server.tmp / "events") in server.log().rsplit("stopped", 1)[-1],
               30, "collection to go back to the first output_dir")
    assert_serving(server, "a moved output_dir")


def test_health_names_every_background_thread(server):
    body = assert_serving(server, "all the cases above")
    assert set(body["threads"]) == set(THREADS), body


# ---- Schemathesis: fuzzing from the server's own OpenAPI schema ------------------------------
@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_5xx_and_health_stays_green(case, server):
    meta = case.meta
    FUZZED[(meta.phase.name.value if meta else "?", meta.generation.mode.value if meta else "?")] += 1
    if isinstance(case.body, dict):
        # Bounded work per case on one 16-token slot: n and prompt lists are capped here (their
        # full range is the request-model property tests' in test_reliability_server_units.py).
        if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
            case.body["n"] = 2
        if isinstance(case.body.get("prompt"), list) and len(case.body["prompt"]) > 2 and \
                not all(isinstance(t, int) for t in case.body["prompt"]):
            case.body["prompt"] = case.body["prompt"][:2]
    response = case.call(session=server.session, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300}: {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] == response.status_code
        assert_sentence(error["message"])
    assert_serving(server, f"{case.method} {case.path} {case.body!r:.200}")


def test_the_fuzzing_sent_valid_and_invalid_cases(server):
    """The fuzz above ran (valid and invalid bodies alike); its count goes to the log (-s)."""
    print(f"Schemathesis sent {sum(FUZZED.values())} cases: {dict(FUZZED)}")
    modes = {mode for _, mode in FUZZED}
    assert {"positive", "negative"} <= modes and sum(FUZZED.values()) >= 50, FUZZED
