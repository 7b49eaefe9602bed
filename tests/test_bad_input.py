"""Bad input fails early with a ValueError whose message is one sentence naming the offending
value and the limit, never with a traceback-worthy exception from deep inside."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tests.backends import backend_params
from safetensors.torch import load_file, save_file

from tpu_engine import LLM, SamplingParams

pytestmark = pytest.mark.slow

VOCAB = 512
KW = dict(max_model_len=128, max_num_seqs=4)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_message(exc: BaseException, *fragments: str) -> str:
    """exc is a plain ValueError with a one-sentence message containing every fragment."""
    assert type(exc) is ValueError, f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert msg.endswith("."), msg
    assert "\n" not in msg, msg
    assert not re.search(r"\.\s", msg[:-1]), f"more than one sentence: {msg}"
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def raises(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    return check_message(info.value, *fragments)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, enforce_eager=True, **KW)


@pytest.fixture
def ckpt(llama_dir, tmp_path):
    """A private copy of the llama checkpoint to damage."""
    path = str(tmp_path / "ckpt")
    shutil.copytree(llama_dir, path)
    return path


def _gen(llm, prompt, params=None):
    return llm.generate([{"prompt_token_ids": prompt}], params or SamplingParams(max_tokens=2), use_tqdm=False)


# ---- prompts and sampling parameters -------------------------------------------------------
def test_prompt_longer_than_max_model_len(llm):
    raises(lambda: _gen(llm, [1] * 129, SamplingParams(max_tokens=1)), "129", "max_model_len 128")


def test_prompt_plus_max_tokens_over_max_model_len(llm):
    raises(lambda: _gen(llm, [1] * 120, SamplingParams(max_tokens=9)), "120", "max_tokens 9", "max_model_len 128")


def test_empty_prompt(llm):
    raises(lambda: _gen(llm, []), "empty", "at least one")


@pytest.mark.parametrize("token", [-1, VOCAB])
def test_token_id_outside_vocabulary(llm, token):
    raises(lambda: _gen(llm, [5, token, 7]), f"token id {token}", f"{VOCAB})")


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_max_tokens_below_one(max_tokens):
    raises(lambda: SamplingParams(max_tokens=max_tokens), f"max_tokens {max_tokens}", ">= 1")


def test_failing_generate_runs_nothing_and_leaves_engine_usable(llm):
    engine = llm.llm_engine
    events = []
    unsubscribe = engine.events.subscribe(events.append)
    steps = engine.step_count
    try:
        raises(lambda: llm.generate([[1, 2, 3], [4, VOCAB + 88, 6], [7, 8]], SamplingParams(max_tokens=3),
                                    use_tqdm=False), f"token id {VOCAB + 88}")
        assert engine.step_count == steps and events == []
        assert not engine.has_unfinished_requests() and engine.num_running() == 0
        outs = llm.generate([[1, 2, 3], [7, 8]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                            use_tqdm=False)
    finally:
        unsubscribe()
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outs)
    assert not engine.has_unfinished_requests()


# ---- prompt forms ---------------------------------------------------------------------------
def test_numpy_and_tuple_prompts_are_token_ids(llm):
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    ids = [5, 300, 17, 42]
    ref = llm.generate([ids], greedy, use_tqdm=False)[0].outputs[0].token_ids
    forms = [
        {"prompt_token_ids": np.array(ids)},
        {"prompt_token_ids": np.array(ids, dtype=np.int32)},
        {"prompt_token_ids": np.array(ids, dtype=np.uint16)},
        [np.int64(5), np.int32(300), np.uint8(17), 42],
        tuple(ids),
    ]
    for form in forms:
        outs = llm.generate(form, greedy, use_tqdm=False)  # one prompt, not a list of them
        assert len(outs) == 1, form
        assert outs[0].prompt_token_ids == ids and all(type(t) is int for t in outs[0].prompt_token_ids)
        assert outs[0].outputs[0].token_ids == ref, form
    # A list of tuples is a list of prompts.
    outs = llm.generate([tuple(ids), (7, 8)], greedy, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [ids, [7, 8]]
    assert outs[0].outputs[0].token_ids == ref


@pytest.mark.parametrize("prompt", [5, None, 2.5, np.int64(7)], ids=["int", "None", "float", "np.int64"])
def test_prompt_that_is_not_a_sequence(llm, prompt):
    raises(lambda: _gen(llm, prompt), f"prompt {prompt!r}", "not a sequence of integer token ids")


@pytest.mark.parametrize("prompt", [[1.0, 2.0], [1, "a"], [1, None], [[1, 2]], np.array([1.0, 2.0]), [True, 2]],
                         ids=["floats", "str", "None", "nested", "np-floats", "bool"])
def test_prompt_with_non_integer_token_ids(llm, prompt):
    raises(lambda: _gen(llm, prompt), "not a sequence of integer token ids")


def test_failing_add_leaves_nothing_queued(llm):
    """An iterator is not a sequence of token ids: generate() rejects it before anything is
    queued, so the good prompt before it must not be left waiting either."""
    engine = llm.llm_engine
    steps = engine.step_count
    with pytest.raises(ValueError) as info:
        llm.generate([[1, 2, 3], iter([4, 5, 6])], SamplingParams(max_tokens=2), use_tqdm=False)
    check_message(info.value)
    assert engine.step_count == steps
    assert not engine.has_unfinished_requests() and engine.num_running() == 0 and engine.step() == []


# ---- model, checkpoint and engine settings -------------------------------------------------
def test_unknown_model_id():
    raises(lambda: LLM("no-such/model", **KW), "'no-such/model'")


def test_checkpoint_without_safetensors(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    assert os.path.isfile(os.path.join(ckpt, "config.json"))
    raises(lambda: LLM(ckpt, **KW), ckpt, "model.safetensors")


def test_truncated_safetensors(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    os.truncate(path, os.path.getsize(path) // 2)
    raises(lambda: LLM(ckpt, **KW), path, "truncated")


def test_tensor_with_wrong_shape(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    tensors = load_file(path)
    name = "model.layers.1.mlp.up_proj.weight"
    assert tuple(tensors[name].shape) == (128, 64)
    tensors[name] = tensors[name].reshape(64, 128).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    raises(lambda: LLM(ckpt, **KW), path, name, "[64, 128]", "[128, 64]")


def test_sharded_checkpoint_with_missing_shard(ckpt):
    single = os.path.join(ckpt, "model.safetensors")
    tensors = load_file(single)
    os.remove(single)
    names = sorted(tensors)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {n: shards[i * 2 >= len(names)] for i, n in enumerate(names)}
    save_file({n: t for n, t in tensors.items() if weight_map[n] == shards[0]},
              os.path.join(ckpt, shards[0]), metadata={"format": "pt"})
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    raises(lambda: LLM(ckpt, **KW), os.path.join(ckpt, shards[1]), "missing")


@pytest.mark.parametrize("backend", backend_params())
def test_a_kv_cache_larger_than_memory_is_refused_before_it_is_allocated(llama_dir, backend):
    """--max-num-seqs 100000 died in the allocator (a torch or numpy traceback) on CPU."""
    raises(lambda: LLM(llama_dir, backend=backend, max_model_len=256, max_num_seqs=10**7,
                       max_num_batched_tokens=10**7),
           "the KV cache for max_num_seqs 10000000 x max_model_len 256 needs", "is available on this host",
           "lower --max-num-seqs or --max-model-len")


def test_tensor_parallel_size_exceeding_devices(llama_dir):
    import torch_xla.runtime as xr
    raises(lambda: LLM(llama_dir, tensor_parallel_size=64, **KW),
           "tensor_parallel_size 64", f"{xr.global_runtime_device_count()} available device")


def test_tensor_parallel_size_not_dividing_heads(llama_dir):
    """Needs more devices than this process has (1 CPU device), so it runs in a child process
    with 4 CPU devices: 3 does not divide the 4 attention heads, 4 not the 2 KV heads, 64
    exceeds the devices."""
    code = (
        "import json, sys\n"
        "from tpu_engine import LLM\n"
        "res = []\n"
        "for tp in (3, 4, 64):\n"
        "    try:\n"
        f"        LLM(sys.argv[1], tensor_parallel_size=tp, **{KW!r})\n"
        "        res.append(None)\n"
        "    except Exception as e:\n"
        "        res.append([type(e).__name__, str(e)])\n"
        "print('RESULT ' + json.dumps(res))\n")
    env = dict(os.environ, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="4",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code, llama_dir], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    results = json.loads(line[len("RESULT "):])
    expected = [("tensor_parallel_size 3", "4 attention heads"),
                ("tensor_parallel_size 4", "2 key/value heads"),
                ("tensor_parallel_size 64", "4 available device")]
    for res, fragments in zip(results, expected):
        assert res is not None, f"{fragments[0]} was accepted"
        kind, msg = res
        assert kind == "ValueError", res
        check_message(ValueError(msg), *fragments)


def test_unknown_dtype(llama_dir):
    raises(lambda: LLM(llama_dir, dtype="float16", **KW), "'float16'", "float32")


def test_bad_load_format(llama_dir):
    raises(lambda: LLM(llama_dir, load_format="pytorch", **KW), "'pytorch'", "safetensors")
