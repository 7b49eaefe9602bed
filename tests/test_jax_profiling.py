"""Profiling the JAX backend: real captures by `scripts/profiling.py --backend jax` (prefill and
decode phase windows, the env window) and one by the torch_xla backend of the same workload,
read through the same trace reader and analysis as torch_xla captures.

The runs are independent processes, so the session fixture starts them all at once and waits:
on a small machine that is what keeps this file's runtime down.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import types

import pytest

from profiling.analysis import tables
from profiling.analysis.analysis import Analysis
from profiling.trace import xspace
from profiling.trace.categories import UNSCOPED, categorize, primitive_of, scope_of
from tests.captures import PROFILING, ROOT, SMALL, Capture, free_port, proc_output, profiling_env

pytestmark = [pytest.mark.slow, pytest.mark.jax]

TINY = ["--input-len", "8", "--output-len", "4", "--batch-size", "2", "--max-model-len", "32"]
RUNS = {  # name -> (flags, extra environment)
    "prefill": (["--backend", "jax", "--profile-phase", "prefill"], {}),
    "decode": (["--backend", "jax", "--profile-phase", "decode"], {}),
    # The env window is timed, so its passes must outlast delay + duration on a fast machine too:
    # 20 passes took 0.2 s on CI and ended before a 200 ms delay. 300 passes there take ~3 s.
    # (through XLA's profiler server, which --profiler-host 0.0.0.0 starts; the torch_xla env window
    # of conftest.py is traced in process, the default)
    "env": (["--backend", "jax", "--num-iters", "300", "--profiler-host", "0.0.0.0"],
            {"VLLM_TPU_PROFILE_DELAY_MS": 200, "VLLM_TPU_PROFILE_DURATION_MS": 500}),
    "torch_prefill": (["--profile-phase", "prefill", "--enforce-eager"], {"XLA_HLO_DEBUG": 1}),
}


# Runs again on the persistent compilation cache its first run filled: name -> first run.
CACHED = {"decode_cached": "decode"}


def _start(name: str, flags: list[str], env: dict, llama_dir: str, tmp_path_factory, logs):
    out = str(tmp_path_factory.mktemp(f"jax-{name}"))
    cmd = [sys.executable, PROFILING, "--model", llama_dir, *SMALL, *TINY, "--profile-result-dir", out,
           "--profiler-port", str(free_port()), *flags]
    files = open(logs / f"{name}.out", "w+"), open(logs / f"{name}.err", "w+")
    proc = subprocess.Popen(cmd, stdout=files[0], stderr=files[1], text=True, cwd=ROOT, env=profiling_env(**env))
    return cmd, proc, out, files


def _finish(cmd, proc, out, files) -> Capture:
    proc.wait(timeout=600)
    text = []
    for f in files:
        f.seek(0)
        text.append(f.read())
        f.close()
    return Capture(subprocess.CompletedProcess(cmd, proc.returncode, *text), out)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, llama_dir) -> dict[str, Capture]:
    """Every run of RUNS on the same small Llama checkpoint, started together (output to files,
    so that no run waits on a full pipe while another is read); then the CACHED runs, each on
    the cache its first run filled."""
    logs = tmp_path_factory.mktemp("jax-logs")
    caches = {first: ["--compilation-cache-dir", str(tmp_path_factory.mktemp(f"cache-{first}"))]
              for first in CACHED.values()}
    started = {name: _start(name, flags + caches.get(name, []), env, llama_dir, tmp_path_factory, logs)
               for name, (flags, env) in RUNS.items()}
    done = {name: _finish(*run) for name, run in started.items()}
    for name, first in CACHED.items():
        flags, env = RUNS[first]
        done[name] = _finish(*_start(name, flags + caches[first], env, llama_dir, tmp_path_factory, logs))
    return done


def _ok(cap: Capture) -> Capture:
    assert cap.proc.returncode == 0, proc_output(cap.proc)
    return cap


def _phases_in_trace(cap: Capture) -> set[str]:
    return {s.phase for s in xspace.step_scopes(xspace.load(cap.xplane()))}


# ---- phase windows -----------------------------------------------------------------------------
def test_prefill_window_holds_prefill_steps_and_no_decode_step(runs):
    cap = _ok(runs["prefill"])
    assert _phases_in_trace(cap) == {"prefill"}
    assert {r["phase"] for r in cap.manifest()} == {"prefill"}
    steps = cap.run_info()["verification"]["steps"]
    assert steps.get("prefill") and not steps.get("decode"), steps


def test_decode_window_holds_decode_steps_and_no_prefill_step(runs):
    cap = _ok(runs["decode"])
    assert _phases_in_trace(cap) == {"decode"}
    rows = cap.manifest()
    assert {r["phase"] for r in rows} == {"decode"} and len(rows) == 3  # output 4: one prefill, 3 decodes
    steps = cap.run_info()["verification"]["steps"]
    assert steps.get("decode") and not steps.get("prefill"), steps


def test_run_record_names_the_backend_and_jax_versions(runs):
    import jax
    import jaxlib
    info = _ok(runs["prefill"]).run_info()
    assert info["backend"] == "jax"
    assert info["versions"]["jax"] == jax.__version__ and info["versions"]["jaxlib"] == jaxlib.__version__
    assert _ok(runs["torch_prefill"]).run_info()["backend"] == "torch_xla"


# ---- layer tables without XLA_HLO_DEBUG or eager mode ------------------------------------------
def test_default_jax_capture_has_one_layer_row_per_model_layer(runs):
    cap = _ok(runs["prefill"])
    info = cap.run_info()
    assert "XLA_HLO_DEBUG" not in info["env"] and info["engine"]["enforce_eager"] is False
    assert "XLA_HLO_DEBUG" not in cap.proc.stdout + cap.proc.stderr  # torch_xla's note is not printed
    table = tables.model_table(Analysis.load(cap.run), "prefill")
    top = [r.name for r in table.rows if r.depth == 0]
    layers = [n for n in top if n.startswith("model.layers.")]
    n_layers = info["model_config"]["num_hidden_layers"]
    assert layers == [f"model.layers.{i}" for i in range(n_layers)], top
    for name in ("model.embed_tokens", "model.norm", "lm_head", "sampler"):
        assert name in top, top
    subs = {r.name for r in table.rows if r.depth == 1}
    for part in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        assert f"model.layers.0.{part}" in subs, sorted(subs)
    unscoped = sum(r.total_ms for r in table.rows if r.name == UNSCOPED)
    assert unscoped < 0.05 * sum(r.total_ms for r in table.rows if r.depth == 0)


def test_executables_from_the_persistent_cache_keep_their_layer_table(runs):
    """A warm cache hands back executables that run under the program ids of the process that
    compiled them; the reader still finds their HLO, so the layer table is whole."""
    cap = _ok(runs["decode_cached"])
    warmup = cap.run_info()["compiles"]["warmup"]
    assert warmup["cache_hits"] > 0 and warmup["cache_misses"] == 0, warmup
    table = tables.model_table(Analysis.load(cap.run), "decode")
    top = [r.name for r in table.rows if r.depth == 0]
    n_layers = cap.run_info()["model_config"]["num_hidden_layers"]
    assert [n for n in top if n.startswith("model.layers.")] == [f"model.layers.{i}" for i in range(n_layers)], top
    unscoped = sum(r.total_ms for r in table.rows if r.name == UNSCOPED)
    assert unscoped < 0.05 * sum(r.total_ms for r in table.rows if r.depth == 0)


# ---- the env window ------------------------------------------------------------------------------
def test_env_window_capture_is_listed_by_tensorboard(runs):
    """XProf's profile plugin (what TensorBoard serves) lists the run under <dir>/plugins/profile/."""
    from tensorboard.plugins import base_plugin
    from xprof.profile_plugin import ProfilePlugin
    cap = _ok(runs["env"])
    assert os.path.dirname(cap.run) == os.path.join(cap.profile_dir, "plugins", "profile")
    assert [f for f in os.listdir(cap.run) if f.endswith(".xplane.pb")] == [f"{socket.gethostname()}.xplane.pb"]
    ctx = base_plugin.TBContext(logdir=cap.profile_dir, flags=types.SimpleNamespace(master_tpu_unsecure_channel=""))
    assert list(ProfilePlugin(ctx).generate_runs()) == [os.path.basename(cap.run)]
    info = cap.run_info()
    assert info["window"]["kind"] == "env" and info["backend"] == "jax"
    assert any(t.startswith("trace_viewer") for t in info["verification"]["xprof_tools"])
    held = sorted(n for steps in info["verification"]["steps"].values() for n in steps)
    assert held and sorted(r["step"] for r in cap.manifest()) == held


@pytest.mark.parametrize("level", ["9", "²"])   # '²'.isdigit() is True, and int('²') raised its own message
def test_a_bad_tracer_level_is_one_sentence_and_exit_2_before_the_model_loads(monkeypatch, capsys, tmp_path, level):
    from profiling.cli import cli
    monkeypatch.setenv("TPU_PROFILER_HOST_TRACER_LEVEL", level)
    with pytest.raises(SystemExit) as stop:
        cli(["capture", "--backend", "jax", "--load-format", "dummy", "--profile-result-dir", str(tmp_path / "p")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: TPU_PROFILER_HOST_TRACER_LEVEL={level!r} must be a tracer level from 0 to 3."]


# ---- compare across backends ---------------------------------------------------------------------
def test_compare_of_torch_xla_and_jax_captures_names_both_and_matches_layers(runs):
    torch_run, jax_run = _ok(runs["torch_prefill"]).run, _ok(runs["prefill"]).run
    proc = subprocess.run([sys.executable, "-m", "profiling", "compare", torch_run, jax_run, "--top", "100"],
                          capture_output=True, text=True, env=profiling_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc_output(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("A: ") and lines[0].endswith("(torch_xla)"), lines[:2]
    assert lines[1].startswith("B: ") and lines[1].endswith("(jax)"), lines[:2]
    # Layers and ops (by scope and category: aten__mm and dot_general are the same work) have
    # values on both sides.
    for name in ("model.layers.0", "model.layers.1", "lm_head", "model.layers.0.mlp [matmul]",
                 "model.layers.1.self_attn [attention]", "lm_head [matmul]"):
        row = next((line.split() for line in lines if line.startswith(name + " ")), None)
        assert row and "absent" not in row[len(name.split()):], (name, proc.stdout[:3000])


# ---- JAX's op names ------------------------------------------------------------------------------
@pytest.mark.parametrize("op_name, scope, primitive", [
    ("jit(prefill_forward)/model.layers.3.self_attn/dot_general", "model.layers.3.self_attn", "dot_general"),
    ("jit(decode_forward)/model.layers.0.mlp/jit(silu)/logistic", "model.layers.0.mlp", "logistic"),
    ("jit(f)/model.layers.1.self_attn/bthd,bshd->bhts/dot_general", "model.layers.1.self_attn", "dot_general"),
    ("jit(f)/model.layers.2/mlp/mul", "model.layers.2.mlp", "mul"),         # nested scopes join with dots
    ("jit(head_and_sample)/jit(_argmax)/sampler/argmax", "sampler", "argmax"),
    ("jit(f)/while/body/model.norm/rsqrt", "model.norm", "rsqrt"),
    ("jit(prefill_forward)/add", UNSCOPED, "add"),                         # outside every scope
    ("jit(f)/model.layers.0.mlp/jit(silu)", "model.layers.0.mlp", ""),
    ("model.layers.3.mlp.12/aten__mm", "model.layers.3.mlp", ""),          # torch_xla's, unchanged
])
def test_jax_op_names_give_scope_and_primitive(op_name, scope, primitive):
    assert (scope_of(op_name), primitive_of(op_name)) == (scope, primitive)


@pytest.mark.parametrize("args, batched, category", [
    (("fusion", ("dot",), "dot_general", "model.layers.0.self_attn"), True, "attention"),   # QK^T, PV
    (("fusion", ("dot",), "dot_general", "model.layers.0.self_attn"), False, "matmul"),     # projections
    (("fusion", ("exponential",), "exp", "model.layers.0.self_attn"), False, "attention"),  # softmax
    (("fusion", ("dot",), "dot_general", "model.layers.0.mlp"), True, "matmul"),
    (("fusion", ("multiply",), "cos", "model.layers.0.self_attn"), False, "rope"),
    (("fusion", ("exponential",), "exp", "model.layers.0.mlp"), False, "elementwise"),      # silu
    (("dot", (), "aten__mm", "model.layers.0.self_attn"), True, "matmul"),                   # torch_xla: by name
])
def test_jax_ops_are_categorized_like_torch_xla_ones(args, batched, category):
    assert categorize(*args, batched_dot=batched) == category
