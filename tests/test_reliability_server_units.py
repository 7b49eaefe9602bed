"""Hostile input without a server: Hypothesis property tests over the request parsers, the
sampling parameters and the service profiler's config (any input is parsed within range or
refused with one sentence, never another exception), and regression tests for the service
profiler's threads and handlers and for `check_port`."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling.service.collector import Collector
from profiling.service.config import ConfigWatcher, read_config
from profiling.service.patching import instrument
from profiling.service.symbols import Symbol
from tests.servers import wait_until
from tests.service_targets import Batch, Worker
from tpu_engine.cli import check_port
from tpu_engine.outputs import SamplingParams
from tpu_engine.serve import threads
from tpu_engine.serve.errors import RequestError
from tpu_engine.serve.protocol import parse_chat, parse_completion
from tpu_engine.serve.tokenizer import Tokenizer, default_tokenizer_path

FAST = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TOKENIZER = Tokenizer(default_tokenizer_path())
SERVED = ["tiny"]


def assert_sentence(message: str) -> None:
    """One plain sentence: a full stop at the end and none inside (quoted values aside)."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", message)
    assert message.endswith(".") and "\n" not in message and ". " not in bare[:-1], repr(message)


# ---- the request models ----------------------------------------------------------------------
HOSTILE_INTS = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -2**63 - 1, -2, 10**100, 10**4000])
LEAVES = (st.none() | st.booleans() | st.integers() | HOSTILE_INTS | st.floats() | st.text(max_size=12))
JSON = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                     max_size=4), max_leaves=10)
FIELDS = ["model", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "logprobs", "stream",
          "stream_options", "stop", "stop_token_ids", "ignore_eos", "echo", "include_stop_str_in_output",
          "best_of", "min_p", "presence_penalty", "prompt_logprobs", "max_completion_tokens", "top_logprobs",
          "add_generation_prompt"]
PROMPTS = (st.lists(st.integers(-5, 70_000) | HOSTILE_INTS, min_size=0, max_size=6) | st.text(max_size=30)
           | st.lists(st.text(max_size=10) | st.lists(st.integers(0, 100), max_size=3), max_size=3) | JSON)
OPTIONS = st.fixed_dictionaries({}, optional={"include_usage": JSON})
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot"]),
                                           "content": st.text(max_size=20) | JSON}), max_size=3) | JSON
FIELD_VALUES = st.dictionaries(st.sampled_from(FIELDS), JSON | HOSTILE_INTS, max_size=6)


def assert_in_range(req) -> None:
    """What reaches a tensor or a counter is within the bounds the engine was built for."""
    p = req.params
    assert math.isfinite(p.temperature) and p.temperature >= 0 and 0 < p.top_p <= 1
    assert p.top_k >= -1 and 1 <= p.max_tokens < 2**31 and 1 <= req.n <= 128   # top_k >= vocab: off
    assert p.seed is None or len(str(p.seed)) <= 4001    # hashed through str()
    assert p.logprobs is None or 0 <= p.logprobs <= 20
    assert all(0 <= t < 2**31 for t in p.stop_token_ids or [])
    assert all(isinstance(t, int) for prompt in req.prompts for t in prompt)
    assert type(req.stream) is bool and type(req.include_usage) is bool and type(req.echo) is bool


def _parse(parse, body):
    try:
        req = parse(body)
    except RequestError as e:
        assert e.status in (400, 404)
        assert_sentence(str(e))
        return None
    assert_in_range(req)
    return req


@FAST
@given(fields=FIELD_VALUES, prompt=PROMPTS, options=OPTIONS, raw=JSON)
def test_any_completion_body_is_parsed_in_range_or_refused_with_one_sentence(fields, prompt, options, raw):
    for body in ({**fields, "prompt": prompt, "stream_options": options}, {**fields, "prompt": prompt}, raw):
        _parse(lambda b: parse_completion(b, SERVED, TOKENIZER), body)
        _parse(lambda b: parse_completion(b, SERVED, None), body)


@FAST
@given(fields=FIELD_VALUES, messages=MESSAGES, raw=JSON)
def test_any_chat_body_is_parsed_in_range_or_refused_with_one_sentence(fields, messages, raw):
    for body in ({**fields, "messages": messages}, raw):
        _parse(lambda b: parse_chat(b, SERVED, TOKENIZER, 16), body)


@FAST
@given(kw=st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "max_tokens", "logprobs", "seed",
                                           "stop_token_ids"]), JSON | HOSTILE_INTS, max_size=4))
def test_any_sampling_params_are_valid_or_one_sentence(kw):
    try:
        p = SamplingParams(**kw)
    except ValueError as e:
        assert type(e) is ValueError
        assert_sentence(str(e))
        return
    assert math.isfinite(p.temperature) and 0 < p.top_p <= 1


@pytest.mark.parametrize("body, message", [
    ({"prompt": [1], "stream": True, "stream_options": {"include_usage": "no"}},
     "stream_options.include_usage must be true or false, not 'no'."),
    ({"prompt": [1], "top_k": -2}, "top_k must be -1 or 0 (off) or a positive integer, not -2."),
    ({"prompt": [1], "temperature": 10**400}, "temperature must be a finite number, not an integer of 401 digits."),
    ({"prompt": [1], "max_tokens": 10**4000}, "max_tokens must be an integer from 1 to 2147483647, not an integer "
                                             "of 4001 digits."),
])
def test_regressions_of_the_request_checks(body, message):
    with pytest.raises(RequestError) as info:
        parse_completion(body, SERVED, TOKENIZER)
    assert str(info.value) == message


# ---- the service profiler's config -----------------------------------------------------------
CONFIG_VALUES = JSON | st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -5, 0, 9, 10, 60_000, 60_001, 2**70])


@FAST
@given(doc=st.dictionaries(st.sampled_from(["enable", "output_dir", "domains", "poll_interval_ms",
                                            "flush_interval_ms"]), CONFIG_VALUES, max_size=5))
def test_any_config_is_read_finite_and_bounded_or_refused_with_one_sentence(tmp_path, doc):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))   # NaN and Infinity as the JSON module writes (and reads) them
    try:
        cfg = read_config(str(path))
    except ValueError as e:
        assert_sentence(str(e))
        return
    for key in ("poll_interval_ms", "flush_interval_ms"):
        assert math.isfinite(getattr(cfg, key)) and 10 <= getattr(cfg, key) <= 60_000
    assert type(cfg.enable) is bool and isinstance(cfg.output_dir, str)


def _stderr(capsys):
    """Everything written to stderr so far (capsys hands each piece out once)."""
    seen = []

    def read() -> str:
        seen.append(capsys.readouterr().err)
        return "".join(seen)
    return read


def _write(path, doc: dict) -> None:
    """Replace the file at once, so the watcher never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_the_config_watcher_survives_its_errors_and_says_so_once(tmp_path, capsys):
    path, err = tmp_path / "config.json", _stderr(capsys)
    _write(path, {"poll_interval_ms": 10})
    seen = []

    def apply(cfg):
        seen.append(cfg.enable)
        if cfg.output_dir.endswith("boom"):
            raise RuntimeError("apply failed")
    watcher = ConfigWatcher(str(path), apply)
    try:
        for n, doc in enumerate([{"output_dir": "boom"}, {"output_dir": "boom", "enable": 0}], 2):
            _write(path, {"poll_interval_ms": 10, **doc})
            wait_until(lambda: len(seen) == n, 30, f"config {n} to be applied")
        wait_until(lambda: "apply failed" in err(), 30, "the failure to be reported")
        assert err().count("config watcher failed (RuntimeError: apply failed)") == 1, err()
        _write(path, {"poll_interval_ms": math.nan})
        wait_until(lambda: "poll_interval_ms=nan must be a number of milliseconds" in err(), 30, "NaN refused")
        _write(path, {"poll_interval_ms": 10, "enable": 1})
        wait_until(lambda: seen[-1] is True, 30, "the watcher to apply the next good config")
        assert watcher.thread.is_alive() and watcher.config.poll_interval_ms == 10
    finally:
        watcher.stop()


# ---- the collector's writer ------------------------------------------------------------------
class Unprintable:
    def __str__(self):
        raise RuntimeError("no str")


def _lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_the_writer_survives_unwritable_events_and_an_insane_interval(tmp_path, capsys):
    c, err = Collector(), _stderr(capsys)
    c.flush_interval_s = math.nan      # the config refuses it; the writer must not die of it either
    c.start(str(tmp_path / "a"))
    try:
        cycle = []
        cycle.append(cycle)
        c.record("T", "cyclic", 1, 2, {"x": cycle})
        c.record("T", "unprintable", 1, 2, {"x": Unprintable()})
        c.record("T", "fine", 1, 2, {"x": 1})
        wait_until(lambda: "fine" in [e.get("name") for e in _lines(c.path)], 30, "the good span to be written")
        assert c.writer.is_alive() and "dropped 2 event(s)" in err()
        first = c.path
        c.start(str(tmp_path / "b"))   # a changed output_dir moves collection to a new file
        c.record("T", "moved", 1, 2)
        wait_until(lambda: "moved" in [e.get("name") for e in _lines(c.path)], 30, "the span in the new file")
        assert c.path.startswith(str(tmp_path / "b")) and "moved" not in [e.get("name") for e in _lines(first)]
        assert _lines(c.path)[0]["type"] == "header" and _lines(c.path)[1]["name"] == "enable"
    finally:
        c.close()


# ---- custom handlers -------------------------------------------------------------------------
def _instrument(handler: str, collector):
    spec = f"tests.reliability_handlers:{handler}"
    return instrument([Symbol("tests.service_targets:Worker.run", "run", "Test", handler=spec)], collector,
                      allowed={"timer", spec})


@pytest.mark.parametrize("handler, calls", [("raise_before", 1), ("raise_after", 1)])
def test_a_raising_handler_is_recorded_once_and_the_call_proceeds(tmp_path, capsys, handler, calls):
    c = Collector()
    undo, problems = _instrument(handler, c)
    try:
        assert problems == []
        c.start(str(tmp_path))
        w = Worker()
        for n in range(1, 4):
            assert w.run(Batch([1, 2]), scale=3) == [3, 6] and w.calls == n * calls
        assert capsys.readouterr().err.count(f"handler tests.reliability_handlers:{handler}") == 1
        c.stop()
        assert w.run(Batch([1])) == [1]             # off: the plain call
        c.start(str(tmp_path))                      # and on again
        assert w.run(Batch([2])) == [2]
        c.flush()
        errors = [e for e in _lines(c.path) if e["type"] == "span" and "handler.error" in e["attrs"]]
        assert len(errors) == 4 and errors[0]["attrs"]["handler.error"].startswith("RuntimeError: handler failed")
    finally:
        for u in undo:
            u()
        c.close()


def test_the_functions_own_error_passes_through_a_handler(tmp_path):
    c = Collector()
    undo, _ = _instrument("raise_after", c)
    try:
        c.start(str(tmp_path))
        with pytest.raises(AttributeError):         # Batch needs .ids: the function's own error
            Worker().run(None)
    finally:
        for u in undo:
            u()
        c.close()


# ---- the thread registry behind /health ------------------------------------------------------
def test_a_stopped_thread_shows_as_stopped():
    t = threading.Thread(target=lambda: None, name="short")
    threads.watch("short-lived", lambda: t)
    try:
        assert threads.states()["short-lived"] == "not started"
        t.start()
        t.join()
        assert threads.states()["short-lived"] == "stopped"
    finally:
        threads.unwatch("short-lived")


# ---- check_port --------------------------------------------------------------------------------
def test_a_port_in_time_wait_is_free():
    with socket.socket() as listener:   # a server that ran before, as uvicorn binds (SO_REUSEADDR)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()                    # the server side closes first: its end waits in TIME_WAIT
        client.close()
    with socket.socket() as plain:      # without SO_REUSEADDR the port is refused (the old check)
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    check_port("server port", port, "--port", "127.0.0.1")


def test_a_port_in_use_and_a_bad_host_are_told_apart():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ValueError, match=f"server port {port} is already in use; choose another with --port"):
            check_port("server port", port, "--port", "127.0.0.1")
    for host in ("256.1.1.1", "no_such_host.invalid", "bad\x00host"):
        with pytest.raises(ValueError, match=r"^host .* cannot be resolved .*--host\.$"):
            check_port("server port", 8000, "--port", host)


# ---- what one request may carry (tpu_engine/serve/limits.py) ---------------------------------
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)   # lone surrogates included


@FAST
@given(stops=st.lists(st.text(max_size=300) | ANY_TEXT, max_size=80), n=st.integers(1, 128),
       prompts=st.integers(1, 300), text=ANY_TEXT)
def test_stop_lists_surrogates_and_prompts_x_n_are_bounded_or_refused(stops, n, prompts, text):
    from tpu_engine.serve.limits import MAX_CHOICES, MAX_STOP, MAX_STOP_CHARS
    body = {"prompt": [[1, 2]] * prompts, "n": n, "stop": stops}
    req = _parse(lambda b: parse_completion(b, SERVED, TOKENIZER), body)
    if req is not None:
        assert len(req.stop) <= MAX_STOP and all(0 < len(s) <= MAX_STOP_CHARS for s in req.stop)
        assert len(req.prompts) * req.n <= MAX_CHOICES
    for b in ({"prompt": text}, {"prompt": [text, "ok"]}):
        req = _parse(lambda b: parse_completion(b, SERVED, TOKENIZER), b)
        assert req is None or all(t.encode("utf-8") for t in req.texts if t)   # tokenizable text only
    req = _parse(lambda b: parse_chat(b, SERVED, TOKENIZER, 16), {"messages": [{"role": "user", "content": text}]})
    assert req is None or req.texts[0].encode("utf-8")


def _nested(depth: int, leaf) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@FAST
@given(depth=st.integers(0, 3000), where=st.sampled_from(["stop", "prompt", "messages", "stream_options"]))
def test_any_nesting_is_parsed_or_refused_without_recursion(depth, where):
    """The body's depth is checked before anything walks it (a RecursionError was a 500)."""
    from tpu_engine.serve.limits import MAX_DEPTH, parse_body
    data = json.dumps({where: _nested(depth, "x")}) if depth < 900 else \
        '{"' + where + '": ' + "[" * depth + "]" * depth + "}"   # (json.dumps itself recurses)
    try:
        body = parse_body(data.encode())
    except RequestError as e:
        assert_sentence(str(e))
        assert f"deeper than {MAX_DEPTH}" in str(e) and depth + 1 > MAX_DEPTH
        return
    assert depth + 1 <= MAX_DEPTH
    for parse in (lambda b: parse_completion(b, SERVED, TOKENIZER), lambda b: parse_chat(b, SERVED, TOKENIZER, 16)):
        _parse(parse, body)


# ---- the profiling routes' Host and Origin checks (tpu_engine/serve/security.py) ---------------
HOSTS = st.sampled_from(["127.0.0.1:8000", "localhost", "[::1]:8000", "10.1.2.3", "evil.example", "evil.example:80",
                         "127.0.0.1.evil.example", "localhost.evil.example", "[::1", "a:b:c", "", "::1"]) | st.text(max_size=20)


@FAST
@given(host=HOSTS, origin=st.none() | st.sampled_from(["null", "http://evil.example", "http://127.0.0.1:8000",
                                                       "http://[::1"]) | st.text(max_size=20))
def test_only_requests_addressed_to_this_server_from_its_own_origin_reach_admin_routes(host, origin):
    import ipaddress

    from tpu_engine.serve.security import _host_of, admin_check
    headers = {"host": host, **({"origin": origin} if origin is not None else {})}
    refused = admin_check(headers, "127.0.0.1")      # never raises, whatever the headers
    name = _host_of(host)
    if refused is None:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            assert name in {"localhost", "127.0.0.1", socket.gethostname().lower(), socket.getfqdn().lower()}
        assert origin is None or _host_of(origin.split("//", 1)[-1].split("/")[0]) == name
    else:
        assert_sentence(refused)


def test_vllms_api_key_is_read_from_the_flag_then_the_environment():
    from tpu_engine.serve.security import api_keys
    assert api_keys(None, {}) == [] and api_keys(None, {"VLLM_API_KEY": ""}) == []
    assert api_keys(None, {"VLLM_API_KEY": "k"}) == ["k"] and api_keys(["a", "b"], {"VLLM_API_KEY": "k"}) == ["a", "b"]


# ---- a refused /start_profile leaves no listener (profiling/capture/live.py) -------------------
def test_a_refused_start_leaves_the_engines_listeners_as_they_were(tmp_path, monkeypatch):
    """The profiler session is made before anything subscribes: a bad profiler setting (here
    JAX's host tracer level, read when the session is made) refuses the start and leaves the
    engine's phase listeners unchanged. A good start adds one and its stop removes it."""
    from types import SimpleNamespace

    from profiling.capture.live import LiveCapture
    from tpu_engine.compile import CompileStats
    from tpu_engine.events import EventBus
    engine = SimpleNamespace(events=EventBus(), config=SimpleNamespace(backend="jax"),
                             compile_stats=lambda: CompileStats(0, 0.0, 0, 0))
    live = LiveCapture(str(tmp_path), engine)
    monkeypatch.setenv("TPU_PROFILER_HOST_TRACER_LEVEL", "9")
    for _ in range(3):
        with pytest.raises(ValueError, match="TPU_PROFILER_HOST_TRACER_LEVEL='9' must be a tracer level"):
            live.start()
    assert len(engine.events._listeners) == 0 and not live.running
    monkeypatch.delenv("TPU_PROFILER_HOST_TRACER_LEVEL")
    live.start()
    assert len(engine.events._listeners) == 1 and live.running
    live.stop()
    assert len(engine.events._listeners) == 0 and not live.running
