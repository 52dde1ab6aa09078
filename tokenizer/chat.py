"""Chat templates: the model's own Jinja template, rendered in a sandbox.

Owns: `ChatTemplate`, `TemplateError`. Imports: jinja2, stdlib. Used by: server (prompts), tests.

Templates come from model files, so they run in jinja2's immutable sandbox, in the environment
Hugging Face's `apply_chat_template` gives them (a template renders the same text here as in
transformers): its whitespace settings (trim_blocks, lstrip_blocks), `{% break %}` and
`{% continue %}`, the `{% generation %}` block, the globals `raise_exception`, `strftime_now`,
`dict` and a `namespace` that refuses underscore names, and a `tojson` that keeps non-ASCII text.
Messages are passed as transformers passes them: keys whose value is null are left out, and a
message's `thinking` or `reasoning` is also given as `reasoning_content`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template: ChatML, the format most small chat models are tuned on.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """The template failed to render these messages (the template's own message is kept)."""


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type object itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` whose attribute names may not start with an underscore."""

    def __init__(*args, **kwargs):  # jinja2's own signature trick, so namespace(self=1) works
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore names on a namespace ({name!r})")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks the assistant's text for training masks;
    rendering only needs its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


_REASONING = ("reasoning_content", "thinking", "reasoning")


def _as_transformers_passes(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING if k in message), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


class ChatTemplate:
    """A compiled chat template. `render` returns the prompt text, special tokens spelled out."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, jinja2.ext.loopcontrols])
        env.globals.update(raise_exception=_raise, strftime_now=_strftime_now, dict=_Dict(),
                           namespace=_Namespace)
        env.filters["tojson"] = _tojson
        self.source = source or CHATML
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        # A token the model does not have is left undefined, as transformers leaves it.
        self._tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None, **extra: Any) -> str:
        try:
            return self._template.render(
                messages=[_as_transformers_passes(m) for m in messages], tools=tools,
                documents=None, add_generation_prompt=add_generation_prompt,
                **{**self._tokens, **extra})
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
            raise TemplateError(f"chat template failed on these messages: {e}") from None
