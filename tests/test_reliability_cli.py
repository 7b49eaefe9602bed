"""Nonsense flags, environment values and model configs are refused up front: exit 2 (or a
ValueError) with one sentence naming the flag, variable or field, never a traceback and never
after the model has loaded. In-process, so hundreds of cases take seconds."""
from __future__ import annotations

import argparse
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling.capture import cli as capture_cli
from profiling.capture.windows import DURATION_ENV, MAX_WINDOW_MS, plan_window
from profiling.cli import cli
from tests.reliability import JSON, failed, one_sentence, run_main
from tpu_engine.config import MAX_DIM, REGISTRY, ModelConfig, config_from_hf, load_config

BASE = dict(REGISTRY["meta-llama/Llama-3.2-1B-Instruct"])  # every field kind: head_dim, llama3 rope, eos list


# ---- analysis and capture flags ------------------------------------------------------------------
@pytest.mark.parametrize("command", [["summarize", "x"], ["compare", "x", "y"]])
@pytest.mark.parametrize("top", ["-5", "0", "x", "", "1e3"])
def test_top_must_be_a_positive_integer(command, top):
    failed(run_main(cli, [*command, "--top", top]), "--top")


@pytest.mark.parametrize("argv, flag", [
    (["capture", "--profile-result-dir", ""], "--profile-result-dir"),
    (["capture", "--profile-result-dir", "  "], "--profile-result-dir"),
    (["doctor", "--profile-result-dir", ""], "--profile-result-dir"),
    (["service", "parse", ".", "--output-path", ""], "--output-path"),
    (["capture", "--profiler-port", "0"], "--profiler-port"),
    (["capture", "--profiler-port", "70000"], "--profiler-port"),
    (["capture", "--batch-size", "-3"], "--batch-size"),
    (["capture", "run_to_completion", "-n", "0"], "-n"),
    (["capture", "--seed", "-1"], "--seed"),
    (["capture", "--num-iters-warmup", "9" * 20], "--num-iters-warmup"),
    (["capture", "--compilation-cache-dir", ""], "--compilation-cache-dir"),
])
def test_nonsense_flag_is_refused(argv, flag):
    failed(run_main(cli, argv), flag)


@pytest.mark.parametrize("value", [str(10 ** 12), "-5", "0", "abc", "1e3", "9" * 5000, "3600001"])
def test_absurd_profile_duration_is_refused_before_anything_runs(value, monkeypatch, tmp_path):
    """The seed's example failed after 135 s with a pybind dump: now the profile dir is never
    even created."""
    monkeypatch.setenv(DURATION_ENV, value)
    profile_dir = tmp_path / "profiles"
    failed(run_main(cli, ["capture", "--profile-result-dir", str(profile_dir)]), DURATION_ENV)
    assert not profile_dir.exists()


@given(value=st.text(max_size=30) | st.integers().map(str))
@settings(max_examples=200, deadline=None)
def test_any_window_value_is_refused_or_in_range(value):
    args = argparse.Namespace(profile_phase=None, profile_steps=None, profile_min_batch=1, profile_min_kv_len=0)
    try:
        window = plan_window(args, environ={DURATION_ENV: value})
    except ValueError as e:
        one_sentence(str(e), DURATION_ENV)
        return
    assert 1 <= window.duration_ms <= MAX_WINDOW_MS


NUMERIC = ["--input-len", "--output-len", "--batch-size", "--num-iters", "--num-iters-warmup", "--profile-steps",
           "--profile-min-batch", "--profile-min-kv-len", "--profiler-port", "--seed"]


@given(flags=st.dictionaries(st.sampled_from(NUMERIC), st.integers().map(str) | st.text(max_size=8), max_size=4),
       result_dir=st.sampled_from(["profiles", "", " ", "a/b"]))
@settings(max_examples=200, deadline=None)
def test_any_capture_flags_are_refused_or_sane(flags, result_dir):
    """The capture command's parser and checks alone (nothing runs): exit 2 naming a flag, or
    values the run can use."""
    parser = capture_cli.add_arguments(argparse.ArgumentParser(prog="profiling.py"))
    argv = [x for k, v in flags.items() for x in (f"{k}={v}",)] + [f"--profile-result-dir={result_dir}"]
    res = run_main(lambda a: capture_cli.check_args(parser.parse_args(a), parser.error), argv)
    if res.code == 2:
        msg = failed(res)
        assert any(f in msg for f in NUMERIC + ["--profile-result-dir"]), msg
        return
    args = parser.parse_args(argv)
    assert res.code == 0 and min(args.input_len, args.output_len, args.batch_size, args.num_iters) >= 1
    assert 1 <= args.profiler_port <= 65535 and args.profile_result_dir.strip() and 0 <= args.seed < 2 ** 63
    assert args.num_iters <= capture_cli.MAX_PASSES and args.num_iters_warmup <= capture_cli.MAX_PASSES


@given(data=st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_analysis_arguments_end_in_output_or_exit_2(all_capture, tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("args")
    (tmp / "a_dir").mkdir()
    (tmp / "a_file").write_text("x")
    paths = st.sampled_from([all_capture.run, all_capture.profile_dir, str(tmp / "missing"), str(tmp / "a_file"),
                             str(tmp / "a_dir"), "", "-", "no-such-run"])
    outs = st.sampled_from([str(tmp / "out.json"), str(tmp / "a_dir"), str(tmp / "a_file" / "x"), "", str(tmp / "o")])
    command = data.draw(st.sampled_from(["summarize", "compare"]))
    argv = [command, data.draw(paths)] + ([data.draw(paths)] if command == "compare" else [])
    if data.draw(st.booleans()):
        argv += ["--top", data.draw(st.integers(-3, 10 ** 6).map(str) | st.text(max_size=4))]
    if command == "summarize":
        for flag in data.draw(st.lists(st.sampled_from(["--json", "--csv", "--chrome-trace"]), max_size=2, unique=True)):
            argv += [flag, data.draw(outs)]
    res = run_main(cli, argv)
    if res.code != 0:
        failed(res)


# ---- the model config ----------------------------------------------------------------------------
def _config(**changes) -> dict:
    cfg = json.loads(json.dumps(BASE))
    for k, v in changes.items():
        if v is _DELETE:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


_DELETE = object()
BAD_CONFIGS = {
    "missing hidden_size": (_config(hidden_size=_DELETE), ["'hidden_size'"]),
    "null num_hidden_layers": (_config(num_hidden_layers=None), ["'num_hidden_layers'"]),
    "num_hidden_layers a string": (_config(num_hidden_layers="16"), ["'num_hidden_layers'", "'16'"]),
    "negative num_hidden_layers": (_config(num_hidden_layers=-2), ["'num_hidden_layers'", "-2"]),
    "zero heads": (_config(num_attention_heads=0), ["'num_attention_heads'", "0"]),
    "vocab_size a float": (_config(vocab_size=1.5), ["'vocab_size'", "1.5"]),
    "bool for an int": (_config(intermediate_size=True), ["'intermediate_size'"]),
    "rope_scaling a string": (_config(rope_scaling="llama3"), ["'rope_scaling'", "'llama3'"]),
    "rope_scaling without factor": (_config(rope_scaling={"rope_type": "llama3"}), ["'rope_scaling.factor'"]),
    "unknown rope type": (_config(rope_scaling={"rope_type": "yarn", "factor": 2.0}), ["rope_type", "'yarn'"]),
    "rope high not above low": (_config(rope_scaling={**BASE["rope_scaling"], "high_freq_factor": 1.0}),
                                ["high_freq_factor"]),
    "heads not dividing hidden": (_config(hidden_size=100, num_attention_heads=8, head_dim=_DELETE),
                                  ["'hidden_size'", "100", "8"]),
    "kv heads not dividing heads": (_config(num_key_value_heads=5), ["'num_key_value_heads'", "5"]),
    "NaN eps": (_config(rms_norm_eps=float("nan")), ["'rms_norm_eps'"]),
    "zero rope_theta": (_config(rope_theta=0), ["'rope_theta'"]),
    "tie_word_embeddings a string": (_config(tie_word_embeddings="no"), ["'tie_word_embeddings'", "'no'"]),
    "eos a string": (_config(eos_token_id="</s>"), ["'eos_token_id'"]),
    "architectures a string": (_config(architectures="LlamaForCausalLM"), ["'architectures'"]),
    "unknown architecture": (_config(architectures=["GPT2LMHeadModel"]), ["GPT2LMHeadModel"]),
    "model_type a list": (_config(architectures=_DELETE, model_type=["llama"]), ["architecture"]),
    "a list, not an object": ([1, 2], ["JSON object"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_model_config_names_the_field(case):
    raw, fragments = BAD_CONFIGS[case]
    with pytest.raises(ValueError) as info:
        config_from_hf(raw)
    assert type(info.value) is ValueError
    one_sentence(str(info.value), *fragments)


@pytest.mark.parametrize("text, fragments", [
    ('{"hidden_size": ', ["not valid JSON"]),
    ('{"rms_norm_eps": NaN}', ["not valid JSON", "NaN"]),
    ("[]", ["JSON object"]),
    (json.dumps(_config(num_hidden_layers=-1)), ["'num_hidden_layers'", "-1"]),
])
def test_bad_config_json_names_the_file(tmp_path, text, fragments):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(str(tmp_path))
    one_sentence(str(info.value), str(tmp_path / "config.json"), *fragments)


def test_capture_with_a_bad_config_fails_before_loading(tmp_path):
    """A negative layer count once failed only after the whole profile ran."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_config(num_hidden_layers=-4)))
    profile_dir = tmp_path / "profiles"
    res = run_main(cli, ["capture", "--model", str(model), "--profile-result-dir", str(profile_dir)])
    failed(res, str(model / "config.json"), "'num_hidden_layers'", "-4")
    assert not profile_dir.exists()


def _sane(cfg: ModelConfig) -> None:
    ints = [cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.max_position_embeddings]
    assert all(type(v) is int and 1 <= v <= MAX_DIM for v in ints), cfg
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    assert math.isfinite(cfg.rms_norm_eps) and cfg.rms_norm_eps > 0 and math.isfinite(cfg.rope_theta)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


KEYS = sorted(set(BASE) | {"head_dim", "model_type", "rope_parameters", "attention_bias", "num_key_value_heads"})


@given(changes=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), JSON | st.just(_DELETE), max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_change_to_a_config_is_refused_or_sane(changes):
    try:
        cfg = config_from_hf(_config(**changes))
    except ValueError as e:
        assert type(e) is ValueError
        one_sentence(str(e))
        return
    _sane(cfg)


@given(raw=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=12) | JSON)
@settings(max_examples=200, deadline=None)
def test_any_json_is_refused_or_a_sane_config(raw):
    try:
        cfg = config_from_hf(raw)
    except ValueError as e:
        one_sentence(str(e))
        return
    _sane(cfg)


@given(changes=st.dictionaries(st.sampled_from(sorted(ModelConfig.__dataclass_fields__)), JSON, max_size=3))
@settings(max_examples=200, deadline=None)
def test_any_recorded_model_config_is_refused_or_sane(changes):
    """`run_info.json` keeps the model config (`to_dict`); reading it back validates it too."""
    data = {**config_from_hf(BASE).to_dict(), **changes}
    try:
        cfg = ModelConfig.from_dict(data)
    except ValueError as e:
        one_sentence(str(e))
        return
    _sane(cfg)
