"""Streaming detokenization never splits a UTF-8 character; stop strings are held back and never
sent; chat templates run sandboxed. Uses a tiny byte-level BPE tokenizer built in code."""

import pytest

from tests.conftest import byte_tokenizer
from tokenizer import ChatTemplate, StopMatcher, TemplateError, TextStream


@pytest.mark.parametrize("text", ["héllo wörld", "日本語テキスト", "emoji 🙂👨‍👩‍👧 ok", "plain"])
def test_stream_never_splits_a_character(text):
    tok = byte_tokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: characters span tokens
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text
    for piece in pieces:
        piece.encode("utf-8")  # no lone surrogates / replacement of half characters
        assert "\ufffd" not in piece


def test_stream_skips_special_tokens():
    tok = byte_tokenizer()
    stream = TextStream(tok)
    ids = tok.encode("hi<|im_end|>")
    assert "".join(stream.push(i) for i in ids) == "hi"


def _feed(matcher, pieces):
    out, stopped = [], False
    for p in pieces:
        text, stopped = matcher.push(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    return out, stopped


def test_stop_string_across_pieces_is_never_sent():
    out, stopped = _feed(StopMatcher(["END"]), ["Hello E", "N", "D and more"])
    assert stopped and "".join(out) == "Hello "
    assert out[0] == "Hello "  # "E" was held back until known


def test_held_text_is_released_when_it_is_not_a_stop():
    out, stopped = _feed(StopMatcher(["END"]), ["Hello E", "N", "ough"])
    assert not stopped and "".join(out) == "Hello ENough"
    out, stopped = _feed(StopMatcher(["END"]), ["Hello EN"])
    assert not stopped and out == ["Hello ", "EN"]


def test_earliest_of_several_stops_wins():
    out, stopped = _feed(StopMatcher(["world", "lo w"]), ["hello world"])
    assert stopped and "".join(out) == "hel"
    out, stopped = _feed(StopMatcher(["\n\n", "###"]), ["a\n", "\nb"])
    assert stopped and "".join(out) == "a"


def test_no_stops_passes_through():
    assert StopMatcher([]).push("anything") == ("anything", False)


def test_chat_template_renders_and_is_sandboxed():
    t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert t.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError):
        evil.render([])
    strict = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}"
                          "{% endif %}ok")
    with pytest.raises(TemplateError, match="user first"):
        strict.render([{"role": "system", "content": "x"}])


def test_missing_template_falls_back_to_chatml():
    text = ChatTemplate(None).render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
