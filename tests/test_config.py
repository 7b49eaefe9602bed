"""Model configs: HF config.json in both transformers dialects, the registry, RoPE scaling,
and model resolution through the local HF cache."""
import json
import shutil

import pytest
import torch

from tpu_engine.config import REGISTRY, ModelConfig, config_from_hf
from tpu_engine.rope import rope_inv_freq
from tpu_engine.weights import find_in_hf_cache, resolve_model

LLAMA31_4X = dict(REGISTRY["meta-llama/Llama-3.1-8B-Instruct"])


def test_transformers_5_rope_parameters_equal_4x_rope_scaling():
    v5 = {k: v for k, v in LLAMA31_4X.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = {**LLAMA31_4X["rope_scaling"], "rope_theta": LLAMA31_4X["rope_theta"]}
    assert config_from_hf(v5) == config_from_hf(LLAMA31_4X)
    assert config_from_hf(v5).rope_scaling.factor == 8.0


@pytest.mark.parametrize("model_id", sorted(REGISTRY))
def test_model_config_round_trips_through_json(model_id):
    """What a run record keeps of the model reads back as the same config (llama3 rope too)."""
    cfg = config_from_hf(REGISTRY[model_id])
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_model_config_from_dict_names_a_missing_field():
    data = config_from_hf(REGISTRY["tpu-engine/tiny-llama"]).to_dict()
    del data["hidden_size"]
    with pytest.raises(ValueError, match="model config lacks hidden_size"):
        ModelConfig.from_dict(data)


def test_default_rope_in_5x_dialect():
    raw = {k: v for k, v in REGISTRY["Qwen/Qwen2.5-0.5B-Instruct"].items() if k != "rope_theta"}
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    cfg = config_from_hf(raw)
    assert cfg.rope_scaling is None and cfg.rope_theta == 1e6


@pytest.mark.parametrize("model_id, params", [
    # Parameter counts published with the checkpoints.
    ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
    ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
    ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400),
])
def test_registry_architectures_match_published_sizes(model_id, params):
    assert config_from_hf(REGISTRY[model_id]).num_params() == params


def test_every_registry_entry_builds():
    for model_id, raw in REGISTRY.items():
        cfg = config_from_hf(raw)
        assert cfg.num_attention_heads % cfg.num_key_value_heads == 0, model_id
        assert cfg.architecture == ("qwen2" if "Qwen" in model_id else "llama")
        assert cfg.attention_bias == (cfg.architecture == "qwen2")


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    raw = {k: v for k, v in LLAMA31_4X.items() if k != "architectures"}
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**raw), "cpu")
    cfg = config_from_hf(LLAMA31_4X)
    ours = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    torch.testing.assert_close(torch.from_numpy(ours), ref.float())


def test_model_id_resolves_through_local_hf_cache(tmp_path, monkeypatch, llama_dir):
    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(llama_dir, snap)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_in_hf_cache("acme/tiny") == str(snap)
    source = resolve_model("acme/tiny")
    assert source.weights_dir == str(snap) and source.config.vocab_size == 512
    assert resolve_model("acme/tiny", "dummy").weights_dir is None


def test_known_id_without_weights_needs_dummy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="load_format='dummy'"):
        resolve_model("Qwen/Qwen2.5-7B-Instruct")
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct", "dummy").config.hidden_size == 3584
