"""The service profiler in-process: attribute expressions, the symbol YAML, patching, the
collector's file and the config watcher; and cProfile helpers. (Against a live server:
tests/test_service_server.py and tests/test_service_parse.py.)"""
from __future__ import annotations

import asyncio
import json
import os
import pstats

import pytest

from profiling.cprofile import cprofile, cprofile_context
from profiling.service.collector import Collector
from profiling.service.config import ConfigWatcher, DEFAULTS, ensure_config, read_config
from profiling.service.expr import Context, ExpressionError, compile_expr
from profiling.service.patching import instrument
from profiling.service.symbols import DEFAULT_SYMBOLS, Symbol, load_symbols, version_allows
from tests.service_targets import Batch, Worker


def _eval(text, args=(), kwargs=None, result=None, names=None):
    binder = (lambda a, k: dict(names)) if names is not None else None
    return compile_expr(text)(Context(args, kwargs or {}, result, binder))


def test_expressions_read_arguments_attributes_and_results():
    batch = Batch([3, 4, 5])
    assert _eval("args[0] | attr ids | len", args=(batch,)) == 3
    assert _eval("return | len | str", result=[1, 2]) == "2"
    assert _eval("len(ids)", names={"ids": [1, 2, 3, 4]}) == 4
    assert _eval("kwargs['batch_size']", kwargs={"batch_size": 8}) == 8
    assert _eval("return[0] | attr ids | sum", result=[batch]) == 12
    assert _eval("reqs | map attr ids | map len", names={"reqs": [batch, Batch([1])]}) == [3, 1]
    assert _eval("args[0] | attr ids | max", args=(batch,)) == 5
    assert _eval("obj | attr pop | call", names={"obj": [7, 8]}) == 8


@pytest.mark.parametrize("text, reason", [
    ("", "non-empty"), ("args[0] | frobnicate", "unknown operation 'frobnicate'"),
    ("args[zero]", "expected [index]"), ("| len", "does not start with a name"),
    ("x | attr", "unknown operation 'attr'"), ("x || len", "empty step")])
def test_bad_expressions_are_refused_with_the_reason(text, reason):
    with pytest.raises(ExpressionError, match=reason.replace("[", r"\[")):
        compile_expr(text)


class Holder:
    import os as os_module          # a module reached through a public attribute
    secret = staticmethod(lambda: "ran")

    def __init__(self):
        self._private = 1


@pytest.mark.parametrize("text, reason", [
    ("args[0] | attr __globals__", "attr __globals__ is private"),
    ("args[0] | attr _private", "attr _private is private"),
    ("args[0] | map attr __class__", "attr __class__ is private"),
    ("kwargs['__builtins__']", "the key '__builtins__' is private"),
    ("args[0] | call", "call must follow an attr step"),
    ("args[0] | attr ids | len | call", "call must follow an attr step")])
def test_expressions_reach_public_attributes_only(text, reason):
    with pytest.raises(ExpressionError, match=reason):
        compile_expr(text)


@pytest.mark.parametrize("text", ["args[0] | attr os_module | attr getcwd | call",
                                  "args[0] | attr secret | call"])
def test_call_runs_methods_of_objects_only(text):
    """A function of a module (or a plain function kept on a class) is not a method: refused
    when the expression runs, so the attribute records an error and nothing is called."""
    with pytest.raises(TypeError, match="call only calls a method of an object"):
        _eval(text, args=(Holder(),))


def test_handlers_are_the_shipped_ones_or_listed_and_others_are_never_imported(tmp_path, collector):
    from profiling.service.handlers import HANDLERS_ENV, allowed_handlers
    assert allowed_handlers({}) == {"timer"}
    listed = allowed_handlers({HANDLERS_ENV: " tests.service_targets:twice , pkg.m:f "})
    assert listed == {"timer", "tests.service_targets:twice", "pkg.m:f"}
    spec = "tests.a_module_that_must_not_load:handler"
    undo, problems = instrument([Symbol("tests.service_targets:Worker.run", "run", "Test", handler=spec)],
                                collector, allowed={"timer"})
    try:
        assert problems == [f"symbol tests.service_targets:Worker.run: handler {spec!r} is not allowed (only the "
                            f"shipped handlers and those listed in PROFILING_HANDLERS); using the timer."]
        collector.start(str(tmp_path / "out"))
        assert Worker().run(Batch([1, 2])) == [1, 2]       # the timer stood in
        assert [s["name"] for s in _spans(collector)] == ["run"]
    finally:
        for u in undo:
            u()


def _yaml(tmp_path, text, name="symbols.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_malformed_yaml_is_one_message_naming_the_line(tmp_path):
    symbols, problems = load_symbols(_yaml(tmp_path, "- symbol: a:b\n  attributes: [\n"))
    assert symbols == []
    assert len(problems) == 1 and "is not valid YAML at line" in problems[0] and "nothing is instrumented" in problems[0]
    symbols, problems = load_symbols(_yaml(tmp_path, "symbol: a:b\n"))
    assert symbols == [] and "must hold a list of entries" in problems[0]


def test_entry_problems_are_reported_and_the_rest_is_kept(tmp_path):
    path = _yaml(tmp_path, """
- symbol: tests.service_targets:Worker.run
  domain: Test
  colour: blue
  attributes:
    - name: size
      expr: batch | attr ids | len
    - name: broken
      expr: batch | wobble
- name: no symbol here
- symbol: "not a symbol"
""")
    symbols, problems = load_symbols(path)
    assert [s.symbol for s in symbols] == ["tests.service_targets:Worker.run"]
    assert [a[0] for a in symbols[0].attributes] == ["size"]
    text = "\n".join(problems)
    assert "unknown field(s) colour ignored" in text
    assert "attribute 'broken': expression 'batch | wobble' is not valid" in text
    assert "entry 2: needs a 'symbol: module:Attribute' string" in text
    assert "entry 3 (not a symbol): symbol must look like" in text


def test_the_default_symbols_load_without_problems_and_resolve():
    symbols, problems = load_symbols(DEFAULT_SYMBOLS)
    assert problems == []
    assert {(s.domain, s.name) for s in symbols} == {
        ("Request", "arrive"), ("Request", "http"), ("Schedule", "step"),
        ("ModelExecute", "prefill"), ("ModelExecute", "decode")}
    # Only public functions: batch and KV-cache spans come from the engine's events instead.
    for s in symbols:
        assert not any(part.startswith("_") for part in s.symbol.replace(":", ".").split(".")), s.symbol
    undo, problems = instrument(symbols, Collector())
    try:
        assert problems == [] and len(undo) == len(symbols)
    finally:
        for u in undo:
            u()


def _events(collector):
    collector.flush()
    with open(collector.path) as f:
        return [json.loads(line) for line in f]


def _spans(collector):
    return [e for e in _events(collector) if e["type"] == "span"]


@pytest.fixture
def collector(tmp_path):
    c = Collector()
    yield c
    c.close()


def test_timer_records_spans_with_attributes_only_while_enabled(tmp_path, collector):
    symbols = [Symbol("tests.service_targets:Worker.run", "run", "Test", attributes=[
        (name, text, compile_expr(text)) for name, text in [
            ("size", "batch | attr ids | len"), ("scale", "scale"), ("out", "return | sum"),
            ("missing", "args[0] | attr no_such_field")]])]
    undo, problems = instrument(symbols, collector)
    try:
        assert problems == []
        w = Worker()
        assert w.run(Batch([1, 2]), scale=3) == [3, 6]      # not collecting: plain call
        collector.start(str(tmp_path / "out"))
        assert w.run(Batch([1, 2, 3])) == [1, 2, 3]
        collector.stop()
        assert w.run(Batch([9])) == [9]
        spans = _spans(collector)
        assert len(spans) == 1 and w.calls == 3
        s = spans[0]
        assert (s["domain"], s["name"]) == ("Test", "run") and s["end"] >= s["start"]
        assert s["attrs"]["size"] == 3 and s["attrs"]["scale"] == 1 and s["attrs"]["out"] == 6
        assert s["attrs"]["missing.error"].startswith("AttributeError")
        markers = [e["name"] for e in _events(collector) if e["type"] == "marker"]
        assert markers == ["enable", "disable"]
    finally:
        for u in undo:
            u()
    assert Worker.run.__name__ == "run" and not hasattr(Worker.run, "__wrapped__")


def test_attributes_by_name_with_varargs_and_defaults(tmp_path, collector):
    exprs = [("n", "items | len"), ("sep", "sep"), ("opts", "opts | len"), ("out", "return")]
    undo, _ = instrument([Symbol("tests.service_targets:Worker.gather", "gather", "Test",
                                 attributes=[(k, e, compile_expr(e)) for k, e in exprs])], collector)
    try:
        collector.start(str(tmp_path / "out"))
        assert Worker().gather(1, 2, 3, flag=True) == "1,2,3"
        assert _spans(collector)[0]["attrs"] == {"n": 3, "sep": ",", "opts": 1, "out": "1,2,3"}
    finally:
        for u in undo:
            u()


def test_async_functions_generators_and_static_methods_are_timed(tmp_path, collector):
    names = ["run_async", "stream", "helper"]
    undo, problems = instrument([Symbol(f"tests.service_targets:Worker.{n}", n, "Test") for n in names], collector)
    try:
        collector.start(str(tmp_path / "out"))
        w = Worker()

        async def go():
            items = [i async for i in w.stream(3)]
            return await w.run_async(1), items
        assert asyncio.run(go()) == (2, [0, 1, 2])
        assert Worker.helper(4) == 8 and w.helper(5) == 10
        assert sorted(s["name"] for s in _spans(collector)) == ["helper", "helper", "run_async", "stream"]
    finally:
        for u in undo:
            u()


def test_custom_handler_and_a_handler_that_cannot_be_imported(tmp_path, collector):
    symbols = [Symbol("tests.service_targets:Worker.run", "run", "Test",
                      handler="tests.service_targets:double_handler"),
               Symbol("tests.service_targets:Worker.run_async", "run_async", "Test",
                      handler="tests.service_targets:no_such_handler")]
    undo, problems = instrument(symbols, collector, allowed={s.handler for s in symbols})
    try:
        assert len(problems) == 1 and "handler 'tests.service_targets:no_such_handler' cannot be imported" in problems[0]
        assert "using the timer" in problems[0]
        collector.start(str(tmp_path / "out"))
        w = Worker()
        assert w.run(Batch([1])) == [1] and w.calls == 2      # the handler ran it twice
        assert asyncio.run(w.run_async(2)) == 3
        assert [s["name"] for s in _spans(collector)] == ["run_async"]  # the fallback timer
    finally:
        for u in undo:
            u()


def test_unknown_symbols_and_version_bounds_are_skipped_with_a_message(collector):
    symbols = [Symbol("tests.service_targets:Worker.nope", "x", "Test"),
               Symbol("tests.no_such_module:f", "x", "Test"),
               Symbol("tpu_engine.engine:LLMEngine.step", "x", "Test", min_version="99.0")]
    undo, problems = instrument(symbols, collector)
    assert undo == []
    assert "has no attribute 'nope'" in problems[0]
    assert "module 'tests.no_such_module' cannot be imported" in problems[1]
    assert "is outside [99.0, -]" in problems[2]
    assert version_allows(Symbol("a:b", "", "", min_version="0.9.1", max_version="0.11.0"), "0.10.2")
    assert not version_allows(Symbol("a:b", "", "", max_version="0.11.0"), "0.11.1")


def test_domain_filter(tmp_path, collector):
    undo, _ = instrument([Symbol("tests.service_targets:Worker.run", "run", "Test")], collector)
    try:
        collector.domains = frozenset({"Other"})
        collector.start(str(tmp_path / "out"))
        Worker().run(Batch([1]))
        assert _spans(collector) == []
    finally:
        for u in undo:
            u()


def test_config_defaults_validation_and_live_toggle(tmp_path):
    path = str(tmp_path / "cfg" / "config.json")
    assert ensure_config(path) and not ensure_config(path)
    cfg = read_config(path)
    assert cfg.enable is False and cfg.output_dir == str(tmp_path / "cfg" / DEFAULTS["output_dir"])
    for bad, reason in [('{"enable": 3}', "enable=3 must be 0 or 1"), ("[1]", "must hold a JSON object"),
                        ("{", "is not valid JSON"), ('{"poll_interval_ms": 0}', "poll_interval_ms=0 must be a number of milliseconds from 10 to 60000")]:
        with open(path, "w") as f:
            f.write(bad)
        with pytest.raises(ValueError, match=reason.replace("[", r"\[")):
            read_config(path)
    with open(path, "w") as f:
        json.dump({"enable": 0}, f)
    seen = []
    watcher = ConfigWatcher(path, lambda c: seen.append(c.enable))
    try:
        with open(path, "w") as f:
            json.dump({"enable": 1, "poll_interval_ms": 50}, f)
        watcher.check()
        with open(path, "w") as f:
            f.write("{ not json")
        watcher.check()                       # reported, previous settings kept
        assert seen == [False, True] and watcher.config.enable is True
    finally:
        watcher.stop()


def test_cprofile_decorator_writes_a_stats_file(tmp_path):
    out = tmp_path / "prof" / "work.prof"

    @cprofile(str(out))
    def work(n):
        return sum(i * i for i in range(n))
    assert work(1000) == sum(i * i for i in range(1000))
    stats = pstats.Stats(str(out))
    assert any(func[2] == "work" for func in stats.stats)
    assert not [p for p in os.listdir(out.parent) if ".tmp-" in p]


def test_cprofile_context_prints_stats_without_a_file(capsys):
    with cprofile_context():
        sorted(range(1000), key=lambda x: -x)
    out = capsys.readouterr().out
    assert "function calls" in out and "cumulative" in out


def test_cprofile_can_be_disabled():
    def f():
        return 1
    assert cprofile(enabled=False)(f) is f
