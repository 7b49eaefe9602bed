"""The JAX backend beside torch_xla: the same tokens on the same weights, the same noise,
tensor parallelism, warm starts from the compilation cache and the same errors.

(Numerics against HF, compile discipline, sampling and the step API run on both backends in
test_numerics.py, test_engine.py and test_sampling.py.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.models import make_hf_model
from tpu_engine import LLM, SamplingParams
from tpu_engine.scheduler import ExpectedRequests

pytestmark = [pytest.mark.slow, pytest.mark.jax]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], list(range(3, 33))]
RUN = """
import json, sys
from tpu_engine import LLM, SamplingParams
if sys.argv[4:] == ["no-trace"]:  # tracing the model would call this
    import tpu_engine.backends.jax.model as model
    def refuse(*a, **k):
        raise AssertionError("the model was traced")
    model.hidden = refuse
from tpu_engine.scheduler import ExpectedRequests
prompts = [{"prompt_token_ids": p} for p in %r]
expected = ExpectedRequests(tuple((len(p["prompt_token_ids"]), 6) for p in prompts))  # logprobs=0: no alternatives
llm = LLM(sys.argv[1], backend="jax", max_model_len=64, max_num_seqs=2, tensor_parallel_size=int(sys.argv[2]),
          compilation_cache_dir=sys.argv[3] or None, progress=False, expected=expected, strict_compiles=True)
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0),
                    use_tqdm=False)
stats = llm.llm_engine.warmup_stats
print(json.dumps({"outs": [[o.outputs[0].token_ids, [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]]
                           for o in outs],
                  "compiles": stats.compiles, "hits": stats.cache_hits, "misses": stats.cache_misses,
                  "spmd": llm.llm_engine.describe().device.spmd}))
""" % (PROMPTS,)


def run_jax(model_dir: str, tp: int, cache_dir: str = "", *, trace: bool = True) -> dict:
    """One JAX engine in a subprocess: the CPU device count is fixed when JAX starts. With
    trace=False, tracing the model fails the run."""
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={tp}"}
    proc = subprocess.run([sys.executable, "-c", RUN, model_dir, str(tp), cache_dir, *([] if trace else ["no-trace"])],
                          env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory):
    # 4 query and 4 key/value heads, intermediate 128: divisible by 2 and 4.
    return make_hf_model(str(tmp_path_factory.mktemp("tp_llama")), "llama", num_key_value_heads=4)


@pytest.fixture(scope="module")
def tp1(tp_model):
    return run_jax(tp_model, 1)


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_single_device(tp_model, tp1, tp):
    got = run_jax(tp_model, tp)
    assert got["spmd"] and not tp1["spmd"]
    for (ref_ids, ref_lp), (ids, lp) in zip(tp1["outs"], got["outs"]):
        assert ids == ref_ids
        assert max(abs(a - b) for a, b in zip(lp, ref_lp)) < 1e-4


@pytest.mark.parametrize("tp", [1, 2])
def test_a_warm_start_loads_every_executable_and_never_traces_the_model(tp_model, tmp_path, tp):
    cold = run_jax(tp_model, tp, str(tmp_path))
    warm = run_jax(tp_model, tp, str(tmp_path), trace=False)
    assert cold["misses"] == cold["compiles"] > 0 and cold["hits"] == 0
    assert warm["hits"] == cold["compiles"] and warm["misses"] == 0
    assert warm["outs"] == cold["outs"]


def test_an_unreadable_stored_executable_is_compiled_again_and_replaced(tp_model, tmp_path):
    from tpu_engine.backends.jax.programs import SUBDIR
    cold = run_jax(tp_model, 1, str(tmp_path))
    stored = sorted(os.listdir(tmp_path / SUBDIR))
    assert len(stored) == cold["compiles"]
    for name in stored:
        (tmp_path / SUBDIR / name).write_bytes(b"torn")
    again = run_jax(tp_model, 1, str(tmp_path))
    assert again["outs"] == cold["outs"] and again["misses"] == again["compiles"] == cold["compiles"]
    assert sorted(os.listdir(tmp_path / SUBDIR)) == stored
    warm = run_jax(tp_model, 1, str(tmp_path), trace=False)
    assert warm["outs"] == cold["outs"] and warm["hits"] == cold["compiles"]


def test_greedy_tokens_identical_to_torch_xla_on_the_same_weights(llama_dir):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = ExpectedRequests(tuple((len(p), 12) for p in PROMPTS))
    tokens = {}
    for backend in ("torch_xla", "jax"):
        llm = LLM(llama_dir, backend=backend, max_model_len=64, max_num_seqs=2, expected=expected,
                  strict_compiles=True, progress=False)
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
        tokens[backend] = [o.outputs[0].token_ids for o in outs]
    assert tokens["jax"] == tokens["torch_xla"]
    assert all(len(t) == 12 for t in tokens["jax"])


def test_sampler_noise_is_the_torch_samplers_bit_for_bit():
    from tpu_engine.backends.jax.sampler import uniform_noise as jax_noise
    from tpu_engine.backends.torch_xla.sampler import uniform_noise as torch_noise
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**32, size=64, dtype=np.uint64)
    counters = rng.integers(0, 2**20, size=64, dtype=np.uint64)
    ours = np.asarray(jax_noise(seeds.astype(np.uint32), counters.astype(np.uint32), 512))
    ref = torch_noise(torch.tensor(seeds.astype(np.int64)), torch.tensor(counters.astype(np.int64)), 512).numpy()
    assert np.array_equal(ours, ref)


def test_bad_settings_get_the_same_sentence_on_both_backends(llama_dir):
    for kwargs in (dict(max_model_len=100000), dict(tensor_parallel_size=3), dict(dtype="float16"),
                   dict(max_num_seqs=0)):
        messages = []
        for backend in ("torch_xla", "jax"):
            with pytest.raises(ValueError) as err:
                LLM(llama_dir, backend=backend, **kwargs)
            messages.append(str(err.value))
        assert messages[0] == messages[1], kwargs
    with pytest.raises(ValueError, match="backend 'tensorflow' is not supported; expected one of torch_xla, jax."):
        LLM(llama_dir, backend="tensorflow")
