"""Small random HF checkpoints (real safetensors written by transformers) for the tests."""
from __future__ import annotations

import torch

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
             initializer_range=0.1)


def make_hf_model(path: str, arch: str, **overrides) -> str:
    """Build a Llama or Qwen2 model with random weights, perturb the biases and norm weights
    (HF initialises them to 0 and 1), and save it as safetensors in `path`."""
    import transformers
    torch.manual_seed(0 if arch == "llama" else 1)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**{**SMALL, "num_key_value_heads": 2, "rope_theta": 500000.0,
                                          "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 64},
                                          **overrides})
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**{**SMALL, "tie_word_embeddings": True, "rope_theta": 1e6, **overrides})
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_logprobs(path: str, prompt: list[int], generated: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced reference: (logprob of each generated token, HF's greedy choice at each step)."""
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt + generated[:-1]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(generated)[:, None])[:, 0], lp.argmax(-1)
