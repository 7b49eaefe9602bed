"""The tokenizer: `tokenizer.json` (HF `tokenizers` format) and, beside it, the optional
`tokenizer_config.json` (its `chat_template`, `bos_token`, `eos_token`). The built-in default
model uses the byte-level BPE shipped in the package (tpu_engine/default_tokenizer.py). Without
a tokenizer the server takes prompts as token ids and returns token ids."""
from __future__ import annotations

import json
import os

from ..config import DEFAULT_MODEL


class Tokenizer:
    def __init__(self, path: str):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self._tok = HFTokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"tokenizer {path!r} could not be read ({e}).") from None
        self.path = path
        config = _read_config(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
        self.chat_template = _template(config.get("chat_template"))
        self.bos_token, self.eos_token = _token(config.get("bos_token")), _token(config.get("eos_token"))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL (encode does not): a long prompt tokenized in a worker
        # thread then leaves the server's event loop free.
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or f"<{token_id}>"

    def token_bytes(self, token_id: int) -> list[int]:
        """The UTF-8 bytes the token decodes to alone (a partial character decodes to U+FFFD)."""
        return list(self._tok.decode([token_id], skip_special_tokens=False).encode())


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer config {path!r} could not be read ({e}).") from None
    return config if isinstance(config, dict) else {}


def _template(value) -> str | None:
    """A template string, or HF's list of named templates (the one named "default")."""
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def _token(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def default_tokenizer_path() -> str:
    from ..default_tokenizer import PATH
    return PATH


def load_tokenizer(model: str, weights_dir: str | None, override: str | None = None) -> Tokenizer | None:
    """`override` (a dir or a tokenizer.json) if given, else the model's own dir, else the
    shipped tokenizer for the built-in default model; None if there is none."""
    if override:
        path = os.path.join(override, "tokenizer.json") if os.path.isdir(override) else override
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer {override!r} has no tokenizer.json.")
        return Tokenizer(path)
    for d in (model if os.path.isdir(model) else None, weights_dir):
        if d and os.path.isfile(os.path.join(d, "tokenizer.json")):
            return Tokenizer(os.path.join(d, "tokenizer.json"))
    if model == DEFAULT_MODEL and weights_dir is None:
        return Tokenizer(default_tokenizer_path())
    return None
