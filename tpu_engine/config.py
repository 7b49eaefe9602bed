"""Model architecture config: read from a HF `config.json`, or from the built-in registry."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

MAX_DIM = 2 ** 31 - 1  # sizes and counts index int32 tensors


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling (`rope_type: llama3`)."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (a run record keeps the model's shape this way)."""
        return dataclasses.asdict(self)

    def __post_init__(self):
        _validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """The inverse of `to_dict`; ValueError naming a missing or bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"model config is {type(data).__name__}; expected a JSON object.")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ValueError(f"model config lacks {', '.join(missing)}.")
        values = {k: data[k] for k in names if k in data}
        scaling = values.get("rope_scaling")
        if scaling is not None:
            if not isinstance(scaling, dict):
                raise ValueError(f"model config field 'rope_scaling' is {_show(scaling)}; expected a JSON object.")
            values["rope_scaling"] = _rope_scaling(_Fields(scaling, "model config", "rope_scaling."))
        eos = values.get("eos_token_ids") or ()
        if not isinstance(eos, (list, tuple)):
            raise ValueError(f"model config field 'eos_token_ids' is {_show(eos)}; expected a list of token ids.")
        values["eos_token_ids"] = tuple(eos)
        return cls(**values)

    def num_params(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embed + h


_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
_REQUIRED = object()


def _show(value: Any) -> str:
    """A bad value, short enough to keep an error message one sentence."""
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 and ". " not in value else "a string"
    if isinstance(value, (list, tuple, dict)):
        return "a list" if isinstance(value, (list, tuple)) else "a JSON object"
    text = repr(value)
    return text if len(text) <= 40 else f"a {len(text)}-digit number"


class _Fields:
    """Typed reads of a config dict; ValueError naming the field (`source` says whose)."""

    def __init__(self, raw: dict[str, Any], source: str, prefix: str = ""):
        self.raw, self.source, self.prefix = raw, source, prefix

    def _bad(self, name: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"{self.source} field '{self.prefix}{name}' is {_show(value)}; expected {expected}.")

    def get(self, name: str, default: Any) -> Any:
        value = self.raw.get(name)
        if value is None:  # HF writes null for "not set"
            if default is _REQUIRED:
                raise ValueError(f"{self.source} lacks the field '{self.prefix}{name}' (or it is null).")
            return default
        return value

    def int(self, name: str, default: Any = _REQUIRED, least: int = 1) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_DIM:
            raise self._bad(name, value, f"an integer from {least} to {MAX_DIM}")
        return value

    def num(self, name: str, default: Any = _REQUIRED) -> float:
        value = self.get(name, default)
        # (a bound, not isinf: float() of an int of 400 digits raises OverflowError; NaN fails both)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e300:
            raise self._bad(name, value, "a finite number above 0")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, value, "true or false")
        return value

    def obj(self, name: str) -> dict[str, Any]:
        value = self.get(name, {})
        if not isinstance(value, dict):
            raise self._bad(name, value, "a JSON object")
        return value

    def token_ids(self, name: str) -> tuple[int, ...]:
        value = self.get(name, [])
        ids = value if isinstance(value, list) else [value]
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_DIM for t in ids):
            raise self._bad(name, value, "a token id or a list of token ids")
        return tuple(ids)


def _validate(c: ModelConfig) -> None:
    """Every field of a ModelConfig, however it was made; ValueError naming the first bad one."""
    f = _Fields(dataclasses.asdict(c), "model config")
    if c.architecture not in ("llama", "qwen2"):
        raise f._bad("architecture", c.architecture, "'llama' or 'qwen2'")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings"):
        f.int(name)
    f.num("rms_norm_eps")
    f.num("rope_theta")
    f.flag("attention_bias", False)
    f.flag("tie_word_embeddings", False)
    if not isinstance(c.eos_token_ids, tuple):
        raise f._bad("eos_token_ids", c.eos_token_ids, "a tuple of token ids")
    f.raw["eos_token_ids"] = list(c.eos_token_ids)
    f.token_ids("eos_token_ids")
    if c.rope_scaling is not None:
        if not isinstance(c.rope_scaling, RopeScaling):
            raise f._bad("rope_scaling", c.rope_scaling, "a RopeScaling")
        _rope_scaling(_Fields(f.raw["rope_scaling"], "model config", "rope_scaling."))
    if c.num_attention_heads % c.num_key_value_heads:
        raise ValueError(f"model config field 'num_attention_heads' ({c.num_attention_heads}) is not a multiple "
                         f"of 'num_key_value_heads' ({c.num_key_value_heads}).")


def _rope_scaling(f: _Fields) -> RopeScaling:
    """Llama-3 scaling's four fields; its smoothing divides by high - low, so high must be above."""
    scaling = RopeScaling(factor=f.num("factor"), low_freq_factor=f.num("low_freq_factor"),
                          high_freq_factor=f.num("high_freq_factor"),
                          original_max_position_embeddings=f.int("original_max_position_embeddings"))
    if scaling.high_freq_factor <= scaling.low_freq_factor:
        raise f._bad("high_freq_factor", scaling.high_freq_factor,
                     f"a number above low_freq_factor ({scaling.low_freq_factor})")
    return scaling


def _rope_settings(f: _Fields) -> tuple[float, RopeScaling | None]:
    # transformers 4.x writes `rope_theta` + `rope_scaling`; 5.x nests both in `rope_parameters`.
    params = f.obj("rope_parameters")
    scaling_key = "rope_scaling" if f.obj("rope_scaling") else "rope_parameters"
    scaling = f.obj(scaling_key)
    theta = f.num("rope_theta", _Fields(params, f.source, "rope_parameters.").num("rope_theta", 10000.0))
    sf = _Fields(scaling, f.source, scaling_key + ".")
    rope_type = sf.get("rope_type", sf.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"{f.source} field '{scaling_key}.rope_type' is {_show(rope_type)}; "
                         f"expected 'default' or 'llama3'.")
    return theta, _rope_scaling(sf)


def _architecture(f: _Fields) -> str:
    archs = f.get("architectures", [])
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise f._bad("architectures", archs, "a list of architecture names")
    arch = next((_ARCHITECTURES[a] for a in archs if a in _ARCHITECTURES), None)
    model_type = f.get("model_type", "")
    if arch is None and isinstance(model_type, str):
        arch = {"llama": "llama", "qwen2": "qwen2"}.get(model_type)
    if arch is None:
        named = ", ".join(map(repr, archs))[:80].replace(". ", ".") if archs else _show(model_type)
        raise ValueError(f"{f.source}: model architecture {named or 'unnamed'} is not supported; "
                         f"expected one of {', '.join(sorted(_ARCHITECTURES))}.")
    return arch


def config_from_hf(cfg: dict[str, Any], source: str = "model config") -> ModelConfig:
    """Build a ModelConfig from the dict of a HF `config.json`; ValueError naming the first
    field that is missing, null, of the wrong type or out of range (`source`: whose config)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source} holds {_show(cfg)}; expected a JSON object.")
    f = _Fields(cfg, source)
    arch = _architecture(f)
    hidden, heads = f.int("hidden_size"), f.int("num_attention_heads")
    head_dim = f.int("head_dim", 0, least=0) or None
    if head_dim is None and hidden % heads:
        raise ValueError(f"{source} field 'hidden_size' ({hidden}) is not a multiple of "
                         f"'num_attention_heads' ({heads}), and no 'head_dim' is given.")
    theta, scaling = _rope_settings(f)
    try:
        return ModelConfig(
            architecture=arch, vocab_size=f.int("vocab_size"), hidden_size=hidden,
            intermediate_size=f.int("intermediate_size"), num_hidden_layers=f.int("num_hidden_layers"),
            num_attention_heads=heads, num_key_value_heads=f.int("num_key_value_heads", heads),
            head_dim=head_dim or hidden // heads,
            max_position_embeddings=f.int("max_position_embeddings", 2048),
            rms_norm_eps=f.num("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            attention_bias=f.flag("attention_bias", arch == "qwen2"),
            tie_word_embeddings=f.flag("tie_word_embeddings", False), eos_token_ids=f.token_ids("eos_token_id"))
    except ValueError as e:  # a relation between fields (_validate): say whose config it is
        raise ValueError(str(e).replace("model config", source, 1)) from None


def load_config(model_dir: str) -> ModelConfig:
    """The model's `config.json`, validated; ValueError naming the file and the field."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.lexists(path):
        raise ValueError(f"model directory {model_dir!r} has no config.json.")
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read().decode("utf-8"), parse_constant=_no_constant)
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e.strerror or type(e).__name__}).") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}).") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    except (ValueError, RecursionError) as e:  # NaN, Infinity, a 5000-digit number, deep nesting
        raise ValueError(f"{path} is not valid JSON ({str(e).split('.')[0] or 'nested too deep'}).") from None
    return config_from_hf(raw, path)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


# Architectures of well-known checkpoints, so `load_format="dummy"` needs no network: the fields
# of each model's published config.json, by model id. The first, tpu-engine/tiny-llama, is the
# built-in default: a small Llama that runs end to end on a 2-core CPU in about a minute.
with open(os.path.join(os.path.dirname(__file__), "models.json")) as _f:
    REGISTRY: dict[str, dict[str, Any]] = json.load(_f)

DEFAULT_MODEL = "tpu-engine/tiny-llama"
