"""Native tool-call syntaxes on the real chat templates of their families (copied from llama.cpp's
source distribution, tests/data/templates/README.md): which syntax a template gets, how tools,
calls and results render, how a model-style reply parses into calls (whole and streamed), and
that the grammar of each syntax accepts such a reply and nothing else."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine import RequestOutput
from server.grammar import GrammarCompiler
from server.output import Choice
from server.tools import (GENERIC, HERMES, LLAMA3, MISTRAL, ToolCallParser, ToolPlan,
                          detect_syntax, prompt_messages, tool_grammar)
from tokenizer import ChatTemplate, Tokenizer
from tokenizer.chat import CHATML

DATA = Path(__file__).parent / "data" / "templates"
FAMILIES = {  # template -> (syntax, bos, eos)
    "Qwen-Qwen2.5-7B-Instruct": (HERMES, "", "<|im_end|>"),
    "Qwen-Qwen3-0.6B": (HERMES, "", "<|im_end|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": (HERMES, "<|begin_of_text|>", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": (MISTRAL, "<s>", "</s>"),
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a city"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time of a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "description": "a zone"}},
                   "required": ["zone"]}}}
CALLS = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "Europe/Paris"}')]


def template(name: str) -> ChatTemplate:
    _, bos, eos = FAMILIES[name]
    return ChatTemplate((DATA / f"{name}.jinja").read_text(), bos, eos)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_gets_its_own_syntax(name):
    assert detect_syntax(template(name)) == (FAMILIES[name][0], True)


def test_a_template_without_tools_gets_the_generic_format():
    smollm2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
               "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
               "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert detect_syntax(ChatTemplate(smollm2)) == (GENERIC, False)
    assert detect_syntax(ChatTemplate(CHATML)) == (GENERIC, False)


def history(call_id: str) -> list[dict]:
    call = {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": "22 C and sunny"},
            {"role": "assistant", "content": "It is 22 C."},
            {"role": "user", "content": "And the time?"}]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tools_calls_and_results_render_in_the_template(name):
    syntax = FAMILIES[name][0]
    plan = ToolPlan(syntax, [WEATHER, TIME], "auto", 8, (False, False))
    messages, tools = prompt_messages(history("abcDEF123"), plan, syntax, True)
    prompt = template(name).render(messages, tools=tools)
    assert "get_time" in prompt and "Local time of a zone" in prompt  # the tools
    assert "22 C and sunny" in prompt  # the tool result
    if syntax is MISTRAL:  # the call, as the family writes it (Mistral adds its id)
        assert '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]' in prompt
    else:
        assert syntax.write(CALLS[:1]) in prompt
    other = template(name).render(prompt_messages(
        [{**m, "tool_calls": [{**m["tool_calls"][0], "function": {
            "name": "get_weather", "arguments": '{"city": "Rome"}'}}]} if m.get("tool_calls") else m
         for m in history("abcDEF123")], plan, syntax, True)[0], tools=tools)
    assert other == prompt.replace("Paris\"}", "Rome\"}")  # the arguments reach the prompt


def test_the_generic_format_writes_calls_and_results_into_the_messages():
    plan = ToolPlan(GENERIC, [WEATHER], "required", 8, (False,))
    messages, tools = prompt_messages(history("call_1"), plan, GENERIC, False)
    assert tools is None and [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                                                "assistant", "user"]
    assert "get_weather" in messages[0]["content"] and "must call" in messages[0]["content"]
    assert messages[2]["content"] == GENERIC.write(CALLS[:1])
    assert messages[3]["content"] == "<tool_response>\n22 C and sunny\n</tool_response>"


def reply(syntax, calls, text=""):
    return (text + "\n" if text else "") + syntax.write(calls)


def parse(syntax, text, pieces):
    parser, content, calls = ToolCallParser(syntax), "", []
    for piece in pieces:
        c, done = parser.feed(piece)
        content, calls = content + c, calls + done
    content += parser.finish()
    return content, [(c.name, c.arguments) for c in calls], calls


def chunks(text, seed):
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3, MISTRAL, GENERIC], ids=lambda s: s.name)
def test_a_model_style_reply_parses_whole_and_streamed(syntax):
    calls = CALLS if syntax.parallel else CALLS[:1]
    text = "Let me look." if syntax.text_first else ""
    whole = reply(syntax, calls, text)
    for pieces in ([whole], list(whole), chunks(whole, 1), chunks(whole, 2)):
        content, got, parsed = parse(syntax, whole, pieces)
        assert content == text and got == calls
        assert all("".join(c.fragments) == c.arguments for c in parsed)
    assert parse(syntax, "Just text.", list("Just text."))[:2] == ("Just text.", [])


@pytest.mark.parametrize("syntax", [HERMES, LLAMA3, MISTRAL, GENERIC], ids=lambda s: s.name)
def test_the_grammar_of_each_syntax_holds_a_reply_to_it(syntax):
    tok = byte_tokenizer_with(["[TOOL_CALLS]"])
    compiler = GrammarCompiler(tok, tok.vocab_size)
    max_calls = 8 if syntax.parallel else 1
    for choice in ("auto", "required"):
        plan = ToolPlan(syntax, [WEATHER, TIME], choice, max_calls, (True, True))
        lark = tool_grammar(plan, None, compiler.special_token)
        calls = CALLS if syntax.parallel else CALLS[:1]
        ok = compiler.compile(lark)
        ids = tok.encode(reply(syntax, calls))
        assert ok.consume(ids), choice
        bad = compiler.compile(lark)
        assert not bad.consume(tok.encode(reply(syntax, [("get_wether", '{"city": "Paris"}')])))
        bad = compiler.compile(lark)
        assert not bad.consume(tok.encode(reply(syntax, [("get_weather", '{"town": "Paris"}')])))
    if syntax is MISTRAL:
        assert "<[257]>" in lark  # the special token is the opening, as one token


def test_a_special_token_opening_reaches_the_parser():
    tok = byte_tokenizer_with(["[TOOL_CALLS]"])
    choice = Choice(tok, [], tools=MISTRAL)
    ids = tok.encode("Sure." + MISTRAL.write(CALLS)) + [256]  # 256: <|im_end|>, the end
    for i, t in enumerate(ids):
        choice.feed(RequestOutput("r#0", [t], "stop" if i == len(ids) - 1 else None))
    assert choice.finish == "tool_calls" and choice.text == "Sure."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "Europe/Paris"})]
    assert all(len(c.id) == 9 for c in choice.calls)  # Mistral's templates insist on 9


def byte_tokenizer_with(specials: list[str]) -> Tokenizer:
    """One token per byte (0-255), <|im_end|> (256, the end), then the given special tokens."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in ["<|im_end|>", *specials]])
    ids = frozenset(range(256, 257 + len(specials)))
    return Tokenizer(hf, None, frozenset({256}), False, None, ids)
