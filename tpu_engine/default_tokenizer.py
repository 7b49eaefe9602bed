"""The shipped tokenizer of the built-in default model (`tpu-engine/tiny-llama`), so that text
prompts and chat work without any download.

It is a byte-level BPE (every string encodes; every byte sequence decodes) with the model's
special tokens at the ids its config expects: `<unk>` 0, `<s>` 1 (added before every prompt, as
Llama does), `</s>` 2 (the EOS). Its merges are learnt from the small English corpus below plus
seeded pseudo-words until the vocabulary has the model's 32,000 ids, so every id the model can
sample decodes to text. The model's weights are random, so the tokenizer only has to be valid,
complete and stable, not good.

Regenerate the packaged file (deterministic for one `tokenizers` release):
    python -m tpu_engine.default_tokenizer            # writes tpu_engine/assets/tokenizer.json
"""
from __future__ import annotations

import os
import sys

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tokenizer.json")
SPECIAL = ["<unk>", "<s>", "</s>"]   # ids 0, 1, 2: tiny-llama's unk, bos and eos
VOCAB_SIZE = 32000   # tiny-llama's vocab_size: every id has a token

_CORPUS = """
The engine serves a language model on an accelerator. A request arrives with a prompt, waits in
the queue, is scheduled into a free slot, and its prompt is prefilled in one step together with
every other waiting prompt that fits. Then the engine decodes one token per step for every
running request until each one reaches its maximum number of tokens or the end of sequence.
Profiling shows where the time goes: the forward pass, the attention over the key and value
cache, the sampler, the host work between steps, and the compilation of graphs for new shapes.
A good server compiles every shape once during warm-up and never again while it serves traffic.
Users send text and chat messages through the OpenAI client; the server answers with text,
token ids, log probabilities and usage, streamed as server-sent events or in one response.
The system prompt tells the assistant who it is. The user asks a question, and the assistant
answers it. What is the capital of France? Paris is the capital of France. How many tokens per
second does the server reach with eight requests in flight? It depends on the batch size, the
prompt length, the output length and the hardware.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096 8192.
Punctuation and code: ( ) [ ] { } < > = + - * / % , . ; : ! ? ' " # @ & | _ ~ ^ $ \\n
def main(): return {"model": "tpu-engine/tiny-llama", "max_tokens": 16, "temperature": 0.0}
Café, naïve, résumé, Grüße, 東京, 你好, こんにちは, Привет, emoji 🙂 and 🚀.
"""


def _pseudo_words(n_lines: int = 20000, seed: int = 0) -> list[str]:
    """Lines of seeded syllable words with Zipf-like frequencies: enough distinct pairs for the
    BPE trainer to fill the vocabulary."""
    import itertools
    import random
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "z", "st", "tr", "pl", "ch", "sh", "th", "br", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    lexicon = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                       for _ in range(rng.randint(1, 4))) for _ in range(40000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(lexicon))))
    return [" ".join(rng.choices(lexicon, cum_weights=cum, k=20)) for _ in range(n_lines)]


def build():
    """The tokenizer, trained on `_CORPUS` and pseudo-words (a `tokenizers.Tokenizer`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    english = [line for line in _CORPUS.splitlines() if line] * 50  # learnt first: the most frequent pairs
    tok.train_from_iterator(english + _pseudo_words(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    assert [tok.token_to_id(s) for s in SPECIAL] == [0, 1, 2], "special tokens are not at ids 0, 1, 2"
    return tok


def main(argv=None) -> None:
    path = (argv or sys.argv[1:] or [PATH])[0]
    tok = build()
    tok.save(path)
    print(f"wrote {path}: byte-level BPE, {tok.get_vocab_size()} ids")


if __name__ == "__main__":
    main()
