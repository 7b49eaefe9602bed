"""Chat messages -> one prompt string: the model's own chat template (`chat_template` in its
tokenizer_config.json, a Jinja template as HF writes it) when it has one, else the plain
template below. A request the template cannot render is a 400, never a server error.

The plain template (the built-in default model has no template of its own): each message as
`<role>: <content>` on its own line, then `assistant:` when a reply is wanted:
    system: You are terse.
    user: Hi!
    assistant:
"""
from __future__ import annotations

import functools
import json

from .errors import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")


def _fail(message: str):
    raise RequestError(message)


def _one_line(text: str) -> str:
    """An error text fit for inside one sentence."""
    return " ".join(str(text).split()).rstrip(".").replace(". ", "; ")


def check_messages(messages) -> list[dict]:
    """The messages with each content as a string; RequestError naming the first bad one."""
    if not isinstance(messages, list) or not messages:
        _fail("messages must be a non-empty list of {role, content} objects.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            _fail(f"messages[{i}] must be an object with 'role' and 'content', not {m!r:.60}.")
        role = m.get("role")
        if role not in ROLES:
            _fail(f"messages[{i}] has role {role!r}; expected one of {', '.join(ROLES)}.")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                _fail(f"messages[{i}] has content parts other than text, which this server cannot read.")
            content = "".join(p["text"] for p in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            _fail(f"messages[{i}] content must be a string or a list of text parts, not {content!r:.60}.")
        out.append({**m, "content": content})
    return out


def plain_template(messages: list[dict], add_generation_prompt: bool) -> str:
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + (["assistant:"] if add_generation_prompt else []))


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    """The template compiled in Jinja's sandbox (a template is code from the model dir)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        from jinja2.exceptions import TemplateError
        raise TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    return env.from_string(source)


def render_chat(messages, tokenizer, add_generation_prompt=True) -> tuple[str, bool]:
    """(prompt text, whether encoding adds special tokens): a model template writes its own BOS;
    the plain template leaves it to the tokenizer."""
    messages = check_messages(messages)
    if not isinstance(add_generation_prompt, bool):
        _fail(f"add_generation_prompt must be true or false, not {add_generation_prompt!r}.")
    source = getattr(tokenizer, "chat_template", None)
    if source is None:
        return plain_template(messages, add_generation_prompt), True
    from jinja2.exceptions import TemplateError
    try:
        template = _compile(source)
        text = template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    except TemplateError as e:
        _fail(f"the chat template cannot render these messages ({_one_line(e)}).")
    except Exception as e:  # a template bug (a bad filter, a wrong type) is still the request's 400
        _fail(f"the chat template cannot render these messages ({type(e).__name__}: {_one_line(e)}).")
    return text, False
