"""The optional tokenizer: `tokenizer.json` in the model directory (HF `tokenizers` format).
Without one the server takes prompts as token ids and returns token ids."""
from __future__ import annotations

import os


class Tokenizer:
    def __init__(self, path: str):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self._tok = HFTokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"tokenizer {path!r} could not be read ({e}).") from None
        self.path = path

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or f"<{token_id}>"


def load_tokenizer(model: str, weights_dir: str | None, override: str | None = None) -> Tokenizer | None:
    """`override` (a dir or a tokenizer.json) if given, else the model's own dir; None if there is
    no tokenizer.json there."""
    if override:
        path = os.path.join(override, "tokenizer.json") if os.path.isdir(override) else override
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer {override!r} has no tokenizer.json.")
        return Tokenizer(path)
    for d in (model if os.path.isdir(model) else None, weights_dir):
        if d and os.path.isfile(os.path.join(d, "tokenizer.json")):
            return Tokenizer(os.path.join(d, "tokenizer.json"))
    return None
