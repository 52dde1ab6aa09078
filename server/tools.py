"""Tool calling, per model family: how calls are written (`ToolSyntax`), how tools and earlier
calls reach the prompt (`prompt_messages`), the grammar that constrains a reply (`tool_grammar`),
and the parser that turns the reply's text back into calls (`ToolCallParser`).

Owns: `ToolSyntax`, `ToolPlan`, `ParsedCall`, `ToolCallParser`, `detect_syntax`,
`prompt_messages`, `tool_grammar`, `new_call_id`. Imports: stdlib, tokenizer, server.grammar.
Used by: server.mapping (prompt, grammar), server.output (parsing).

A template that renders `tools` and whose family has a known call syntax (Hermes and Qwen2.5
`<tool_call>`, Llama 3.x JSON, Mistral `[TOOL_CALLS]`) gets the tools and the history as they
are, and the reply is held to that syntax. Any other template (the default model's has no tools)
gets Ember's generic format: the tools are described in the system message, earlier calls and
results are written into the messages as text, and the reply is either a text answer or a
`<tool_call>` block holding a JSON list of calls. In every case each call's arguments are held to its tool's `parameters`
schema, so the names and arguments that come back are valid by construction.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from server.grammar import lark_json
from tokenizer import ChatTemplate

MAX_PARALLEL_CALLS = 8  # calls in one reply when parallel_tool_calls is true


@dataclass(frozen=True)
class ToolSyntax:
    """How one family writes the calls of a reply: `open`, then each call as
    `head NAME args ARGUMENTS tail`, calls separated by `between`, then `close`."""

    name: str
    open: str
    head: str = '{"name": "'
    args: str = '", "arguments": '
    tail: str = "}"
    between: str = ""
    close: str = ""
    text_first: bool = False  # auto: text may come before the calls (else text or calls)
    parallel: bool = True  # the family writes several calls in one reply
    id_length: int = 24  # Mistral's templates insist on 9 characters

    @property
    def decides(self) -> str:
        """Where text may not come first, a reply that starts with this is calls, any other
        is text. (The text lexeme must end by the time the first lexeme of the calls does:
        llguidance's lexer does not go back.)"""
        return self.open or self.head

    def write(self, calls: list[tuple[str, str]]) -> str:
        """The text of these (name, arguments JSON) calls in this syntax."""
        return self.open + self.between.join(f"{self.head}{name}{self.args}{args}{self.tail}"
                                             for name, args in calls) + self.close


HERMES = ToolSyntax("hermes", "<tool_call>\n", between="\n</tool_call>\n<tool_call>\n",
                    close="\n</tool_call>", text_first=True)
LLAMA3 = ToolSyntax("llama3", "", args='", "parameters": ', parallel=False)
MISTRAL = ToolSyntax("mistral", "[TOOL_CALLS][", between=", ", close="]", text_first=True,
                     id_length=9)
# Ember's own: one block holding a JSON list of calls. (With a block per call, as Hermes writes
# them, the default model repeated its first call until the limit; with a list it ends it.)
GENERIC = ToolSyntax("ember", "<tool_call>\n[", between=", ", close="]\n</tool_call>")

# Telltales of a family in a template's source, tried in order.
_FAMILIES = ((MISTRAL, ("[TOOL_CALLS][",)), (HERMES, ("<tool_call>",)),
             (LLAMA3, ('"parameters": ', "<|python_tag|>")))
_PROBE_TOOL = {"type": "function", "function": {"name": "ember_probe", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}


def detect_syntax(template: ChatTemplate) -> tuple[ToolSyntax, bool]:
    """(syntax, native): the family's own syntax if the template renders tools and is of a
    known family, else the generic format (native False: Ember writes tools into the prompt)."""
    def render(tools):
        try:
            return template.render([{"role": "user", "content": "hi"}], tools=tools)
        except ValueError:  # TemplateError: some templates need tools, some cannot take them
            return None

    with_tools = render([_PROBE_TOOL])
    if with_tools is not None and with_tools != render(None):
        for syntax, telltales in _FAMILIES:
            if any(t in template.source for t in telltales):
                return syntax, True
    return GENERIC, False


def new_call_id(syntax: ToolSyntax) -> str:
    alphabet = string.ascii_letters + string.digits
    body = "".join(secrets.choice(alphabet) for _ in range(syntax.id_length))
    return body if syntax.id_length < 24 else "call_" + body


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of tools: `choice` is "auto", "required" or "named" (then `tools`
    holds only the named one); `max_calls` bounds the calls in one reply."""

    syntax: ToolSyntax
    tools: list[dict[str, Any]]  # {"type": "function", "function": {...}} as the template sees them
    choice: str
    max_calls: int
    strict: tuple[bool, ...]  # per tool: its function.strict


# ---------------------------------------------------------------- prompt


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan | None, syntax: ToolSyntax,
                    native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for the chat template. Native: the history as it is (call arguments
    as objects, as templates expect). Generic: calls and results written out as text, and the
    tools (unless tool_choice is none) described in the system message."""
    if native:
        return [_native(m) for m in messages], plan.tools if plan else None
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            text = m["content"] + "\n" if m["content"] else ""
            out.append({"role": "assistant", "content": text + syntax.write(calls)})
        elif m["role"] == "tool":
            result = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("tool_results", None)
    if plan is not None:
        _describe_tools(out, plan)
    return out, None


def _native(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = []
    for c in message["tool_calls"]:
        try:
            arguments = json.loads(c["function"]["arguments"])
        except ValueError:
            arguments = c["function"]["arguments"]
        calls.append({**c, "function": {**c["function"], "arguments": arguments}})
    return {**message, "tool_calls": calls}


def _describe_tools(messages: list[dict[str, Any]], plan: ToolPlan) -> None:
    """Put the generic format's tool description into the system message."""
    listing = "\n".join(json.dumps({k: v for k, v in t["function"].items() if k != "strict"},
                                   ensure_ascii=False) for t in plan.tools)
    ask = {"required": "You must call at least one tool now.",
           "named": f"You must call the tool {plan.tools[0]['function']['name']} now.",
           "auto": "If no tool helps, answer the user directly instead."}[plan.choice]
    text = ("# Tools\n\nYou can call these tools, given as JSON with a JSON schema of their "
            f"arguments:\n<tools>\n{listing}\n</tools>\n\nTo call tools, reply with only this "
            "block, one object per call:\n<tool_call>\n[{\"name\": <tool name>, \"arguments\": "
            f"<arguments as a JSON object>}}]\n</tool_call>\n{ask}")
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})


# ---------------------------------------------------------------- grammar


def tool_grammar(plan: ToolPlan, answer: tuple[dict[str, Any], bool] | None, special_id) -> str:
    """The Lark grammar of a reply: calls of plan's tools in its syntax (their arguments held
    to their schemas); for auto also a text answer, or a JSON answer of `answer`'s schema.
    `special_id(text)` is the id of a special token spelled text, or None."""
    s = plan.syntax
    calls = [f"call_{i}: {_lit(s.head + t['function']['name'] + s.args)} args_{i} {_lit(s.tail)}\n"
             f"args_{i}: %json {lark_json(t['function']['parameters'], strict)}"
             for i, (t, strict) in enumerate(zip(plan.tools, plan.strict, strict=True))]
    more = f"({_lit(s.between)} call){{0,{plan.max_calls - 1}}}" if plan.max_calls > 1 else ""
    open_, rest = _open(s.open, special_id)
    rules = [_rule("calls", rest, "call", more, _lit(s.close)),
             "call: " + " | ".join(f"call_{i}" for i in range(len(plan.tools))), *calls]
    if plan.choice != "auto":
        start = _rule("start", open_, "calls")
    elif answer is not None:
        start = _rule("start", "answer |", open_, "calls")
        rules.append(f"answer: %json {lark_json(*answer)}")
    elif s.text_first and open_.startswith("<["):  # a special token opens the calls
        start = f"start: TEXT | TEXT {open_} calls"
        rules.append("TEXT: /(?s:.*)/")
    elif s.text_first:  # any text, then the opening text
        start = "start: TEXT | text_then_open calls"
        rules += [f"TEXT: /(?s:.*)/ & ~/(?s:.*){_rx(s.open)}(?s:.*)/",
                  f"text_then_open[lazy]: /(?s:.*)/ {_lit(s.open)}"]
    else:  # text that does not start as the calls do, or calls
        start = _rule("start", "TEXT |", open_, "calls")
        rules.append(f"TEXT: /(?s:.*)/ & ~/{_rx(s.decides)}(?s:.*)/")
    return "%llguidance {}\n" + "\n".join([start, *rules]) + "\n"


def _open(text: str, special_id) -> tuple[str, str]:
    """(what opens the calls, the rest of `open` inside `calls`) as Lark: a leading special
    token is written as its id; ("", "") when the syntax has no opening text."""
    for n in range(len(text), 0, -1):
        tid = special_id(text[:n])
        if tid is not None:
            return f"<[{tid}]>", _lit(text[n:])
    return (_lit(text), "") if text else ("", "")


def _rule(name: str, *parts: str) -> str:
    return f"{name}: " + " ".join(p for p in parts if p)


def _lit(text: str) -> str:
    return json.dumps(text) if text else ""


def _rx(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}/])", r"\\\1", text).replace("\n", r"\n")


# ---------------------------------------------------------------- parsing


@dataclass
class ParsedCall:
    name: str
    arguments: str
    fragments: list[str]  # the arguments as they arrived, piece by piece


class ToolCallParser:
    """Splits a reply's text, fed piece by piece, into content and complete calls.

    Text that may still turn out to be the start of the calls is held back, so the call syntax
    is never sent as content. A call is returned once it is complete (its arguments a whole
    JSON object), never half. The grammar fixed the shape, and this reads it exactly as the
    grammar decides it: a text answer unless the reply starts with `decides` (or, where text
    may come first, until the first `open`); then head NAME args ARGUMENTS tail, separated by
    `between`.
    """

    def __init__(self, syntax: ToolSyntax):
        self.syntax = syntax
        self.state = "undecided"  # -> "text" (no calls can follow) or "calls"
        self._buf = ""  # text not yet returned or parsed
        self._ends: list[int] = []  # offsets in _buf where fed pieces ended
        self._after_call = False
        self._decoder = json.JSONDecoder()

    @property
    def pending(self) -> bool:
        """A call has begun and is not complete."""
        return self.state == "calls" and not self._after_call

    def feed(self, piece: str) -> tuple[str, list[ParsedCall]]:
        """(content that may be sent now, calls completed by this piece)."""
        if piece:
            self._buf += piece
            self._ends.append(len(self._buf))
        content = self._content() if self.state != "calls" else ""
        return content, self._calls() if self.state == "calls" else []

    def finish(self) -> str:
        """At the end of the reply: the content still held back. A call left incomplete (cut
        by max_tokens) is dropped."""
        out, self._buf = ("", "") if self.state == "calls" else (self._buf, "")
        return out

    def _content(self) -> str:
        s, buf = self.syntax, self._buf
        if self.state == "text":
            keep = 0
        elif s.text_first:
            at = buf.find(s.open)
            if at >= 0:
                self.state = "calls"
                self._drop(at + len(s.open))
                return buf[:at].rstrip()  # the whitespace before the calls was held back
            partial = _partial(buf, s.open)
            keep = partial + len(buf[:len(buf) - partial]) - len(buf[:len(buf) - partial].rstrip())
        elif buf.startswith(s.decides):
            self.state = "calls"
            self._drop(len(s.open))
            return ""
        elif s.decides.startswith(buf):
            return ""  # may still become a call
        else:
            self.state, keep = "text", 0
        out = buf[:len(buf) - keep]
        self._drop(len(out))
        return out

    def _drop(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._ends = [e - n for e in self._ends if e > n]

    def _calls(self) -> list[ParsedCall]:
        s, done = self.syntax, []
        while True:
            if self._after_call:  # another call follows its separator; the end needs no reading
                if not (s.between and self._buf.startswith(s.between)):
                    return done
                self._drop(len(s.between))
                self._after_call = False
            call = self._call()
            if call is None:
                return done
            done.append(call)
            self._after_call = True

    def _call(self) -> ParsedCall | None:
        """The call at the start of the buffer once it is complete (and drop its text)."""
        s, buf = self.syntax, self._buf
        name_end = buf.find(s.args, len(s.head)) if buf.startswith(s.head) else -1
        if name_end < 0:
            return None
        start = name_end + len(s.args)
        try:
            _, end = self._decoder.raw_decode(buf, start)
        except ValueError:
            return None
        if not buf.startswith(s.tail, end):
            return None
        cuts = [start, *[e for e in self._ends if start < e < end], end]
        call = ParsedCall(buf[len(s.head):name_end], buf[start:end],
                          [buf[a:b] for a, b in pairwise(cuts)])
        self._drop(end + len(s.tail))
        return call


def _partial(buf: str, marker: str) -> int:
    """Length of the longest suffix of buf that is a proper prefix of marker."""
    for k in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:k]):
            return k
    return 0
