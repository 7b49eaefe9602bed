"""The server's text side without a server: the shipped tokenizer of the default model, streamed
detokenization with stop strings (textstream.py), and chat templates (chat.py)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpu_engine.default_tokenizer import PATH, build
from tpu_engine.serve.chat import render_chat
from tpu_engine.serve.errors import RequestError
from tpu_engine.serve.textstream import TextStream
from tpu_engine.serve.tokenizer import Tokenizer, load_tokenizer

TEXT = "Hello café 東京 🙂, the engine stops here. More"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer("tpu-engine/tiny-llama", None)


def test_default_model_ships_a_complete_byte_level_tokenizer(tok):
    assert tok is not None and tok.path == PATH
    ids = tok.encode(TEXT)
    assert ids[0] == 1 and tok.decode(ids) == TEXT            # <s> first; byte-level: exact round trip
    assert tok._tok.get_vocab_size() == 32000                 # every id the model samples has a token
    assert [tok.token_text(i) for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"]
    assert tok.decode([5000, 31999]), "ids past the first merges decode to nothing"


def test_the_shipped_file_is_what_the_script_builds():
    with open(PATH) as f:
        shipped = json.load(f)
    assert json.loads(build().to_str()) == shipped


def _pieces(tok, ids, **kw) -> tuple[list[str], TextStream]:
    ts = TextStream(tok, **kw)
    out = []
    for k in range(1, len(ids) + 1):
        out.append(ts.add(ids[:k], k == len(ids)))
        if ts.stopped:
            break
    return out, ts


def test_streamed_pieces_join_up_and_never_split_a_character(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces, _ = _pieces(tok, ids)
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    split = [tok._tok.token_to_id(b) for b in ("æ", "Ŀ", "±")]  # 東 as its three byte tokens
    pieces, _ = _pieces(tok, split)
    assert pieces == ["", "", "東"]


@pytest.mark.parametrize("stop, include, expected", [
    (["stops"], False, "Hello café 東京 🙂, the engine "),
    (["stops"], True, "Hello café 東京 🙂, the engine stops"),
    (["京"], False, "Hello café 東"),
    (["xyz", "ngine", "More"], False, "Hello café 東京 🙂, the e"),
])
def test_stop_strings_cut_the_text_and_stream_the_same(tok, stop, include, expected):
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces, ts = _pieces(tok, ids, stop=stop, include_stop=include)
    assert "".join(pieces) == expected
    assert ts.stopped is not None and ts.stopped.reason in stop
    assert ts.num_tokens < len(ids)
    assert tok.decode(ids[:ts.num_tokens]).startswith(expected)


def test_a_stop_token_id_ends_the_text_and_stays_out_unless_asked(tok):
    ids = tok.encode("the engine", add_special_tokens=False) + [2]
    for include in (False, True):
        pieces, ts = _pieces(tok, ids, stop_token_ids=[2], include_stop=include)
        assert "".join(pieces) == "the engine" and ts.stopped.reason == 2


def test_plain_chat_template(tok):
    text, special = render_chat([{"role": "system", "content": "Be terse."},
                                 {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], tok)
    assert (text, special) == ("system: Be terse.\nuser: Hi\nassistant:", True)


class _Templated:
    chat_template = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role "
                     "not supported. Sorry.') }}{% endif %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                     "{% if add_generation_prompt %}[assistant]{% endif %}")
    bos_token, eos_token = "<s>", "</s>"


@pytest.mark.parametrize("messages, fragment", [
    ([], "messages must be a non-empty list"),
    ("hi", "messages must be a non-empty list"),
    ([{"role": "wizard", "content": "x"}], "messages[0] has role 'wizard'"),
    ([{"role": "user", "content": 3}], "messages[0] content must be a string"),
    ([{"role": "system", "content": "x"}], "the chat template cannot render these messages (System role"),
])
def test_bad_chat_messages_are_one_sentence(messages, fragment):
    with pytest.raises(RequestError) as e:
        render_chat(messages, _Templated())
    message = str(e.value)
    assert fragment in message and message.endswith(".") and ". " not in message, message


def test_model_template_renders_and_adds_no_second_bos():
    text, special = render_chat([{"role": "user", "content": "Hi"}], _Templated())
    assert (text, special) == ("[user] Hi\n[assistant]", False)


def _held_by_definition(full: str, stops: list[str]) -> int:
    """The longest k < len(s), over the stops, with `full` ending in s[:k]: every k tried."""
    held = 0
    for s in stops:
        held = max([held] + [k for k in range(1, min(len(s) - 1, len(full)) + 1) if full.endswith(s[:k])])
    return held


@settings(max_examples=300, deadline=None, derandomize=True)
@given(stops=st.lists(st.text("ab\u00e9", min_size=1, max_size=9), min_size=1, max_size=4),
       full=st.text("ab\u00e9", max_size=12))
def test_held_back_text_is_the_longest_prefix_of_a_stop_string_that_ends_the_text(stops, full):
    """The jump search (rfind between the places where the text's last character occurs) holds
    back exactly what trying every prefix length would."""
    stream = TextStream(None, stops)
    assert stream._held(full) == _held_by_definition(full, stops)
