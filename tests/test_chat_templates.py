"""Real chat templates render the text transformers renders, and their end-of-turn tokens end a
reply.

The templates are the families' own (tests/data/templates, copied from llama.cpp's source
distribution); the expected text is transformers' `apply_chat_template` on each conversation,
written by tests/golden/make_template_golden.py into tests/golden/templates.json.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from tokenizers import AddedToken, models
from tokenizers import Tokenizer as HFTokenizer

import tokenizer.chat
from tokenizer import ChatTemplate, TemplateError, Tokenizer

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "golden" / "templates.json").read_text(encoding="utf-8"))
TEMPLATES = HERE / "data" / "templates"
FAMILIES = GOLDEN["families"]


@pytest.fixture
def frozen_clock(monkeypatch):
    """strftime_now reads the golden data's clock, as it did when the golden text was made."""
    now = datetime.fromisoformat(GOLDEN["frozen_now"])

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return now

    monkeypatch.setattr(tokenizer.chat, "datetime", Frozen)


def template(name: str) -> ChatTemplate:
    special = FAMILIES[name]["special_tokens"]
    return ChatTemplate((TEMPLATES / FAMILIES[name]["template"]).read_text(encoding="utf-8"),
                        special.get("bos_token") or "", special.get("eos_token") or "")


def test_every_family_is_covered():
    families = {f["family"] for f in FAMILIES.values()}
    assert {"Qwen2.5", "Qwen3", "Llama 3.1", "Llama 3.2", "Phi-3.5-mini", "Gemma 2",
            "SmolLM3"} <= families
    assert any(f.startswith("Mistral") for f in families)
    for name, family in FAMILIES.items():
        names = {c["name"] for c in GOLDEN["cases"] if c["id"].startswith(name + "/")}
        assert {"chat", "chat_no_generation_prompt", "chat_without_system"} <= names, name
        if family["supports_tools"]:
            assert {"tools", "tools_answered", "tools_pending_result"} <= names, name


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["id"] for c in GOLDEN["cases"]])
def test_renders_as_transformers(frozen_clock, case):
    name = case["id"].split("/")[0]
    render = template(name).render
    args = (case["messages"], case["add_generation_prompt"], case["tools"])
    if "error" in case:  # the template refuses this conversation; so must Ember, as clearly
        with pytest.raises(TemplateError) as refused:
            render(*args, **case["kwargs"])
        if case["error"]["type"] == "jinja2.exceptions.TemplateError":  # raise_exception(...)
            assert str(refused.value) == case["error"]["message"]
        return
    assert render(*args, **case["kwargs"]) == case["text"]


def family_tokenizer(tmp_path: Path, name: str) -> Tokenizer:
    """A Hugging Face model folder with the family's special tokens and its template."""
    family = FAMILIES[name]
    source = (TEMPLATES / family["template"]).read_text(encoding="utf-8")
    strings = sorted({s for s in family["special_tokens"].values() if s} | set(family["end_of_turn"]))
    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in strings])
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {k: v for k, v in family["special_tokens"].items() if v}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
    return Tokenizer.from_path(tmp_path)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_end_of_turn_tokens_end_a_reply(tmp_path, name):
    tok = family_tokenizer(tmp_path, name)
    for text in FAMILIES[name]["end_of_turn"]:
        assert tok.hf.token_to_id(text) in tok.eos_ids, (name, text)


def test_environment_of_transformers():
    """What templates in the wild use beyond plain Jinja."""
    loops = ChatTemplate("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                         "{{ m.content }}{% endfor %}")
    assert loops.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"
    marked = ChatTemplate("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                          "{% endfor %}")
    assert marked.render([{"role": "assistant", "content": "hi"}]) == "hi"
    dumps = ChatTemplate("{{ messages[0].content | tojson(separators=(',', ':')) }}|"
                         "{{ {'é': 1} | tojson }}|{{ {'a': 1} | tojson(indent=2) }}")
    assert dumps.render([{"role": "user", "content": [1, 2]}]) == '[1,2]|{"é": 1}|{\n  "a": 1\n}'
    fields = ChatTemplate("{{ messages[0].content is defined }} {{ messages[0].reasoning_content }}"
                          " {{ bos_token is defined }} {{ documents }}")
    message = {"role": "assistant", "content": None, "thinking": "hmm"}
    assert fields.render([message]) == "False hmm False None"
    with pytest.raises(TemplateError):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])
