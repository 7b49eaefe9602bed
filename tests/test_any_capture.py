"""Any capture, whatever engine made it: steps, phases and layers without our manifest.

Real captures made here by two JAX inference libraries from PyPI, used as their users use them
(tests/foreign_captures.py: google-tunix's NNX Sampler, HF transformers' Flax generate), a Flax
`nn.scan` decoder, a trace with no XLA program, our own engine's JAX capture of the same
checkpoint as the HF one (for `compare`), and the real TPU/GPU captures in /work/shared/testdata.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from profiling.analysis import tables
from profiling.analysis.analysis import Analysis
from profiling.analysis.compare import compare
from profiling.analysis.layers import INFERRED, assign, layer_bounds, scoped_layer
from profiling.analysis.notes import notes
from profiling.analysis.phases import mix_phase
from profiling.export.files import to_json
from profiling.trace.categories import UNSCOPED
from tests.captures import PROFILING, ROOT, SMALL, free_port, proc_output, profiling_cli, profiling_env

TESTDATA = "/work/shared/testdata"
JSON_TRACE = os.path.join(TESTDATA, "tpu_vllm_tpu_inference_qwen3_step.trace.json.gz")
V6E = os.path.join(TESTDATA, "tpu_v6e4_jax_xprof_tpu_inference_2.xplane.pb")
TF_GPU = os.path.join(TESTDATA, "gpu_v100x8_tf2_multi_worker.xplane.pb")
TRAIN_GPU = os.path.join(TESTDATA, "gpu_mi355x_jax_te_fused_attn_train.xplane.pb")
needs_testdata = pytest.mark.skipif(not os.path.isdir(TESTDATA), reason=f"shared captures not available ({TESTDATA})")


@pytest.fixture(scope="module")
def made(tmp_path_factory, llama_dir) -> dict[str, str]:
    """Every capture this file reads, made at once (separate processes, output to files): the
    foreign libraries' and our engine's JAX capture of the same checkpoint."""
    out = tmp_path_factory.mktemp("foreign")
    ours = str(out / "ours")
    cmds = {"tunix": [sys.executable, "-m", "tests.foreign_captures", "tunix", str(out)],
            "hf": [sys.executable, "-m", "tests.foreign_captures", "hf_flax,scanned,no_xla", str(out), llama_dir],
            "ours": [sys.executable, PROFILING, "--model", llama_dir, *SMALL, "--backend", "jax", "--input-len", "12",
                     "--output-len", "6", "--batch-size", "2", "--profile-phase", "all", "--profile-result-dir",
                     ours, "--profiler-port", str(free_port())]}
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=profiling_env(), stdout=open(out / f"{k}.log", "w"),
                                 stderr=subprocess.STDOUT) for k, c in cmds.items()}
    for k, p in procs.items():
        assert p.wait(timeout=600) == 0, (out / f"{k}.log").read_text()[-3000:]
    runs = {k: glob.glob(str(out / k / "plugins" / "profile" / "*"))[0] for k in ("tunix", "hf_flax", "scanned",
                                                                                  "no_xla")}
    runs["ours"] = glob.glob(os.path.join(ours, "plugins", "profile", "*"))[0]
    return runs


def _layer_rows(a: Analysis, phase: str) -> list[str]:
    return [r.module for r in tables.model_table(a, phase).rows if r.depth == 0 and "layers" in r.module]


def _unscoped_pct(a: Analysis) -> float:
    return 100 * sum(o.self_ns for o in a.ops if o.scope == UNSCOPED) / sum(o.self_ns for o in a.ops)


# ---- JAX inference libraries ---------------------------------------------------------------------
def test_tunix_sampler_prefill_and_decode_steps_and_inferred_layers(made):
    """tunix runs a jitted `_prefill_fn`, then a jitted `_decode_fn` whose while loop is the
    decode steps; its NNX Llama names `attention`, `feed_forward`, `rms_norm` but no layer."""
    a = Analysis.load(made["tunix"])
    assert len(a.phase_steps("prefill")) == 2, a.rules  # one per sampler call
    assert len(a.phase_steps("decode")) >= 4, a.rules   # the loop's iterations
    assert {s.source for s in a.steps} >= {"program", "loop"} and a.rules.steps.source == "loop"
    for phase in ("prefill", "decode"):
        assert _layer_rows(a, phase) == [f"layers.{i}{INFERRED}" for i in range(3)], phase
    assert a.rules.layers.how == "inferred" and a.rules.layers.layers == 3
    assert _unscoped_pct(a) < 5
    said = notes(a)
    assert any("inferred" in n for n in said) and not any("XLA_HLO_DEBUG" in n for n in said), said


def test_hf_flax_generate_loop_steps_and_scoped_layers(made, llama_dir):
    """HF's Flax generate, jitted whole: one program per call holding the prefill and a while
    loop of decode steps; linen scopes every module (`.../model/layers/0/self_attn`)."""
    a = Analysis.load(made["hf_flax"])
    assert len(a.phase_steps("prefill")) == 2 and len(a.phase_steps("decode")) == 2 * 5, [s.phase for s in a.steps]
    assert a.rules.steps.source == "loop" and a.rules.phases.source == "loop"
    n = json.load(open(os.path.join(llama_dir, "config.json")))["num_hidden_layers"]
    for phase in ("prefill", "decode"):
        assert _layer_rows(a, phase) == [f"FlaxLlamaForCausalLMModule.model.layers.{i}" for i in range(n)], phase
    assert a.rules.layers.how == "scope"
    assert _unscoped_pct(a) < 5
    assert not any("XLA_HLO_DEBUG" in n for n in notes(a))


def test_flax_scan_layers_are_the_loop_iterations(made):
    a = Analysis.load(made["scanned"])
    assert a.rules.layers.how == "scan" and a.rules.layers.layers == 4
    assert _layer_rows(a, a.phases[0]) == [f"Decoder.layers.{i} (scan)" for i in range(4)]
    # A trace that holds the loop body once (no op events per iteration): shown once, with
    # XLA's trip count
    first = [o for o in a.steps[0].ops if not o.loops]
    body = [o for o in a.steps[0].ops if o.loops]
    seen, once = set(), []
    for o in sorted(body, key=lambda o: o.start_ns):
        if len(o.loops) == 1 and o.name in seen:
            break
        seen.add(o.name)
        once.append(o)
    trips = {(o.module, o.loops[0]): 4 for o in once}
    rule = assign(first + once, {"jit_apply": [first + once]}, trip_counts=trips)
    assert rule.how == "scan" and "once" in rule.text
    assert {o.layer_key for o in once} == {"Decoder.layers (scanned x4)"}


def test_capture_without_xla_programs_is_one_all_phase_and_a_note(made):
    proc = profiling_cli("summarize", made["no_xla"])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc_output(proc)
    a = Analysis.load(made["no_xla"])
    assert a.phases == ["all"] and not a.ops
    assert any("no XLA op executions" in n for n in notes(a))


def test_compare_our_capture_against_hf_flax_of_the_same_model(made, llama_dir):
    """Our engine's JAX capture of the checkpoint against HF Flax's: layers matched by number."""
    ours, theirs = Analysis.load(made["ours"]), Analysis.load(made["hf_flax"])
    n = json.load(open(os.path.join(llama_dir, "config.json")))["num_hidden_layers"]
    result = compare(ours, theirs)
    layer_tables = [t for t in result if "by layer number" in t.title]
    assert [t.title.split(":")[0] for t in layer_tables] == ["prefill", "decode"]
    for t in layer_tables:
        rows = {r.name: r for r in t.rows}
        for i in range(n):
            assert rows[f"layer {i}"].a_ms > 0 and rows[f"layer {i}"].b_ms > 0, (t.title, rows.get(f"layer {i}"))
    ops = next(t for t in result if "(layer, category)" in t.title)
    assert any(r.name == "layer 0 [matmul]" and not r.absent for r in ops.rows)


def test_batch_composition_files_give_mixed_phases(made, tmp_path):
    """tpu-inference's batch-composition files beside a capture (its format) decide the phases
    by the share of prefill tokens."""
    run = tmp_path / "run"
    os.makedirs(run)
    xplane = glob.glob(os.path.join(made["tunix"], "*.xplane.pb"))[0]
    os.link(xplane, run / os.path.basename(xplane))
    steps = len(Analysis.load(str(run)).steps)
    shares = [(40, 0), (30, 10), (12, 12), (2, 20), (0, 2)] * steps
    for i in range(steps):
        pre, dec = shares[i]
        (run / f"batch_composition_stats_2026_01_01_00_00_{i:02d}_000000.json").write_text(json.dumps(dict(
            batch_id=i, total_num_scheduled_tokens=pre + dec, num_prefill_tokens=pre, num_decode_tokens=dec,
            padded_total_num_scheduled_tokens=64, num_reqs=2, min_kv_len=0)) + "\n")
    a = Analysis.load(str(run))
    assert a.rules.phases.source == "batch composition"
    expected = ["prefill_only", "ambiguous", "balanced", "decode_heavy", "decode_only"]
    assert [s.phase for s in a.steps] == [expected[i % 5] for i in range(steps)]


@pytest.mark.parametrize("prefill, total, phase", [
    (10, 10, "prefill_only"), (95, 100, "prefill_heavy"), (90, 100, "prefill_heavy"), (50, 100, "balanced"),
    (70, 100, "ambiguous"), (20, 100, "decode_heavy"), (5, 100, "decode_heavy"), (0, 8, "decode_only")])
def test_mixed_steps_are_classified_as_tpu_inference_does(prefill, total, phase):
    assert mix_phase(prefill, total) == phase


def test_layer_bounds_find_each_layer_of_an_op_sequence():
    """Five layers of the same ops: the first with extra set-up ops, one with two independent
    ops run in the other order (XLA:CPU runs them concurrently), and a final norm that looks
    like a layer's norm: five layers, each from its first op."""
    layer = ["norm", "q", "k", "v", "attn", "o", "norm2", "up", "down"]
    layers = [list(layer) for _ in range(5)]
    layers[0][5:5] = ["rope_table", "mask"]             # hoisted into the first layer
    layers[3][2], layers[3][3] = layers[3][3], layers[3][2]
    seq = ["embed"] + [t for ly in layers for t in ly] + ["norm", "head"]
    cats = ["matmul" if t in ("q", "k", "v", "o", "up", "down", "head") else "norm" if t.startswith("norm") else
            "other" for t in seq]
    bounds = layer_bounds(seq, cats)
    assert len(bounds) == 5
    assert [seq[a] for a, _ in bounds] == ["norm"] * 5
    assert bounds[0] == (1, 1 + len(layers[0]))
    assert layer_bounds(["a", "b"] * 2, ["matmul"] * 4) == []       # too few ops recur to be a layer
    assert layer_bounds(["x", "y", "z"] * 4, ["other"] * 12) == []  # no matmul: a loop, not a layer


# ---- the TPU profiler's Chrome-trace JSON (vLLM on TPU through tpu-inference) --------------------------
@needs_testdata
def test_json_trace_steps_scopes_and_attention_kernel():
    a = Analysis.load(JSON_TRACE)
    assert a.capture.format == "chrome-json"
    assert a.rules.steps.source == "engine" and "_process_engine_step" in a.rules.steps.text
    # the trace holds one execution of `jit_step_fun` on each of its two TPUs, both launched
    # by the same EngineCore step
    runs = [r for r in a.capture.runs if r.module == "jit_step_fun"]
    assert sorted(r.device for r in runs) == ["/device:TPU:0", "/device:TPU:1"]
    assert len(a.steps) == 1 and {r.module for r in a.steps[0].runs} >= {"jit_step_fun", "jit_sample"}
    parts = {r.module.strip() for r in tables.model_table(a, "all").rows if r.depth == 1}
    assert {"QKVParallelLinear", "RowParallelLinear", "MergedColumnParallelLinear"} <= parts, parts
    rpa = [o for o in a.ops if o.name.startswith("RPA-")]
    assert rpa and {o.category for o in rpa} == {"attention"}
    assert {o.scope for o in rpa} == {"_jax_attn_func.ragged_paged_attention"}
    # 64 decoder layers inferred, each with its attention kernel once per device
    assert a.rules.layers.how == "inferred" and a.rules.layers.layers == 64
    per_layer = {}
    for o in rpa:
        per_layer.setdefault(o.layer_key, []).append(o.device)
    assert len(per_layer) == 64 and all(sorted(d) == ["/device:TPU:0", "/device:TPU:1"] for d in per_layer.values())
    doc = json.loads(json.dumps(to_json(a), default=str))
    assert doc["rules"]["steps"]["source"] == "engine" and doc["steps"][0]["source"] == "engine"
    assert doc["context"]["format"] == "chrome-json"


@needs_testdata
@pytest.mark.parametrize("damage", ["truncated", "not_json"])
def test_damaged_json_trace_is_one_sentence_naming_it(tmp_path, damage):
    bad = tmp_path / "host.trace.json.gz"
    data = open(JSON_TRACE, "rb").read()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else gzip.compress(gzip.decompress(data)[:5000]))
    proc = profiling_cli("summarize", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc_output(proc)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], lines


# ---- the shared xplanes ----------------------------------------------------------------------------
@needs_testdata
def test_v6e_capture_steps_are_runs_of_its_program_and_its_notes_are_true():
    a = Analysis.load(V6E)
    assert a.rules.steps.source == "program" and len(a.steps) == 100
    assert all(len({r.device for r in s.runs}) == 4 for s in a.steps)  # jit_f on every TPU at once
    assert a.phases == ["all"] and a.rules.layers.how == "none"
    said = notes(a)
    assert not any("XLA_HLO_DEBUG" in n for n in said) and any("named_scope" in n for n in said), said


@needs_testdata
@pytest.mark.parametrize("path, says", [(TF_GPU, "TensorFlow capture without XLA"),
                                        (TRAIN_GPU, "training capture")], ids=["tensorflow", "training"])
def test_captures_that_are_not_xla_inference_give_one_all_phase_and_say_why(path, says):
    proc = profiling_cli("summarize", path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc_output(proc)
    a = Analysis.load(path)
    assert a.phases == ["all"]
    assert any(says in n for n in notes(a)), notes(a)
    assert says.split()[0] in proc.stdout


@pytest.mark.parametrize("scope, layer", [
    ("model.layers.3.self_attn", ("model.layers.3", "self_attn", 3)),               # ours
    ("FlaxLlamaForCausalLMModule.model.layers.0.mlp.up_proj",                       # Flax linen: layers/0
     ("FlaxLlamaForCausalLMModule.model.layers.0", "mlp.up_proj", 0)),
    ("Transformer.layers_12.attn", ("Transformer.layers_12", "attn", 12)),          # Flax `layers_12`
    ("decoder.layer_2", ("decoder.layer_2", "", 2)),
    ("transformer.h.7.mlp.c_fc", ("transformer.h.7", "mlp.c_fc", 7)),               # GPT-2
    ("blocks.5.ffn", ("blocks.5", "ffn", 5)),
    ("QKVParallelLinear", None), ("lm_head", None), (UNSCOPED, None), ("mlp.width_2", None),  # no layer index
])
def test_scope_conventions_that_number_a_layer(scope, layer):
    assert scoped_layer(scope) == layer


@needs_testdata
def test_ops_without_a_scope_are_labelled_by_their_model_source_line():
    """vLLM's RMSNorm runs outside every named scope; its `source_stack` names the model file."""
    a = Analysis.load(JSON_TRACE)
    rows = tables.model_table(a, "all").rows
    labelled = {r.module.strip() for r in rows if r.depth == 1 and re.fullmatch(r"\S+\.py:\d+", r.module.strip())}
    assert "layernorm.py:169" in labelled, sorted(labelled)[:20]
    assert all(o.scope == UNSCOPED for o in a.ops if o.source == "layernorm.py:169")  # still counted unscoped
