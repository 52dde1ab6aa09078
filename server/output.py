"""Output assembly: the engine's token ids become each choice's text, tool calls and logprobs,
and those become response bodies and SSE chunks.

Owns: `Choice`, `Update`, `Stream`, `chat_events`, `completion_events`, `chat_logprobs`,
`completion_logprobs`, `choice_index`. Imports: server.{protocol,tools,engine_client}, engine (outputs),
tokenizer. Used by: server.routes.

A choice's text is decoded UTF-8 safe (`TextStream`), read for tool calls when the request has
tools (`ToolCallParser`: the call syntax is never sent as content, a call only once complete),
and held back where it may still become a stop string (`StopMatcher`), which is never sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from engine import RequestOutput
from engine.sampling import TokenLogprob
from server.engine_client import EngineFault
from server.protocol import (SSE_DONE, ChatMessageOut, ChoiceLogprobs, ChunkChoice,
                             CompletionChoice, CompletionLogprobs, Delta, ErrorBody, ErrorResponse,
                             FunctionCall, FunctionDelta, TokenLogprobOut, ToolCall, ToolCallDelta,
                             TopLogprob, Usage, sse)
from server.tools import ToolCallParser, ToolSyntax, new_call_id
from tokenizer import StopMatcher, TextStream, Tokenizer


@dataclass
class Update:
    """What one step added to a choice: text to send, its tokens' logprobs, completed calls
    (each with its arguments in the pieces they were generated in)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    calls: list[tuple[ToolCall, list[str]]] = field(default_factory=list)


class Choice:
    """One choice of a reply as its tokens arrive."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str], prefix: str = "",
                 tools: ToolSyntax | None = None):
        # A tool syntax may begin with a special token, so the parser sees them; the end of
        # generation token is the only one left out.
        self._stream = TextStream(tokenizer, skip_special=tools is None)
        self._hidden = tokenizer.eos_ids if tools is not None else frozenset()
        self._parser = ToolCallParser(tools) if tools is not None else None
        self._stops = StopMatcher(stops)
        self.parts = [prefix] if prefix else []
        self.calls: list[ToolCall] = []
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] = []
        self.n_tokens = 0  # tokens of the reply: up to the one that completed a stop string

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, out: RequestOutput) -> Update:
        """Take one step's output for this choice: its tokens one at a time, so that a stop
        string ends the reply at the token that completes it (a step may bring several)."""
        if self.finish:  # already ended by a stop string; the engine may still be running it
            return Update("")
        if out.finish_reason == "error":
            raise EngineFault("the grammar of this request could not continue")
        texts, calls, used = [], [], 0
        for k, t in enumerate(out.new_ids):
            last = k == len(out.new_ids) - 1
            piece = self._stream.push(t) if t not in self._hidden else ""
            if self._parser is not None:
                piece, parsed = self._parser.feed(piece)
                if last and out.finish_reason:
                    piece += self._parser.finish()
                for p in parsed:
                    call = ToolCall(new_call_id(self._parser.syntax), FunctionCall(p.name, p.arguments))
                    calls.append((call, p.fragments))
                    self.calls.append(call)
            text, hit = self._stops.push(piece)
            texts.append(text)
            used += 1
            if hit:
                self.finish = "stop"
                break
        if not self.finish and out.finish_reason:
            texts.append(self._stops.flush())
            self.finish = self._finish_reason(out.finish_reason)
        text = "".join(texts)
        self.parts.append(text)
        self.n_tokens += used
        logprobs = (out.logprobs or [])[:used]
        self.logprobs += logprobs
        return Update(text, logprobs, calls)

    def _finish_reason(self, engine_reason: str) -> str:
        """tool_calls when the reply holds calls, unless max_tokens cut one in half."""
        cut = engine_reason == "length" and self._parser is not None and self._parser.pending
        return "tool_calls" if self.calls and not cut else engine_reason

    def message(self) -> ChatMessageOut:
        """The whole reply; content is null when the reply is only calls."""
        text = self.text
        return ChatMessageOut(text if text or not self.calls else None, tool_calls=self.calls or None)


# ---------------------------------------------------------------- logprobs


def chat_logprobs(tok: Tokenizer, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    def entry(token_id: int, lp: float) -> tuple[str, float, list[int]]:
        raw = tok.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), lp, list(raw)

    return ChoiceLogprobs([
        TokenLogprobOut(*entry(t.token_id, t.logprob), [TopLogprob(*entry(i, lp)) for i, lp in t.top])
        for t in logprobs])


def completion_logprobs(tok: Tokenizer, logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    tokens, values, tops, offsets = [], [], [], []
    for t in logprobs:
        piece = tok.token_bytes(t.token_id).decode("utf-8", errors="replace")
        tokens.append(piece)
        values.append(t.logprob)
        tops.append({tok.token_bytes(i).decode("utf-8", errors="replace"): lp for i, lp in t.top})
        offsets.append(offset)
        offset += len(piece)
    return CompletionLogprobs(tokens, values, tops, offsets)


# ---------------------------------------------------------------- streams


def choice_index(out: RequestOutput, n: int) -> int:
    """Choice j of prompt i is choice i * n + j of the response."""
    return int(out.request_id.rsplit("#", 1)[1]) * n + out.index


@dataclass
class Stream:
    """What an SSE response is made of: the engine's outputs for n choices of each prompt, and
    how a chunk is built around a list of choice items (`chunk(items, usage)`)."""

    request_id: str
    outputs: AsyncIterator[RequestOutput]
    choices: list[Choice]
    n: int
    include_usage: bool
    usage: Callable[[], Usage]
    tokenizer: Tokenizer
    with_logprobs: bool
    chunk: Callable[[list, Usage | None], Any]


async def _events(s: Stream, head: list, items, end) -> AsyncIterator[bytes]:
    """The events of a chat or completion stream: `head` items first, then `items(i, update,
    offset)` for each update of choice i, and `end(i, reason)` when it finishes."""

    def chunk(choice_items: list, usage_value=UNSET) -> bytes:
        return sse(s.chunk(choice_items, None if s.include_usage else usage_value))  # null, or absent

    for item in head:
        yield chunk([item])
    try:
        async for out in s.outputs:
            i = choice_index(out, s.n)
            c = s.choices[i]
            if c.finish:
                continue
            offset = len(c.text)
            for item in items(i, c.feed(out), offset):
                yield chunk([item])
            if c.finish:
                last = all(x.finish for x in s.choices)
                yield chunk([end(i, c.finish)], s.usage() if last else UNSET)
                if last:
                    break
        if s.include_usage:  # OpenAI's shape: one more chunk, no choices, the usage
            yield sse(s.chunk([], s.usage()))
    except EngineFault as e:
        yield sse(ErrorResponse(ErrorBody("InternalServerError", f"request {s.request_id} failed: {e}",
                                          type="server_error")))
    yield SSE_DONE


def chat_events(s: Stream, forced_calls: bool) -> AsyncIterator[bytes]:
    """A chat stream: the role first (content null when the reply can only be calls), then
    content pieces, then each completed call as a delta with its id, type and name, followed
    by its argument fragments."""
    def items(i: int, up: Update, _offset: int) -> list[ChunkChoice]:
        out = []
        if up.text or (s.with_logprobs and up.logprobs):
            out.append(ChunkChoice(i, Delta(content=up.text), None,
                                   chat_logprobs(s.tokenizer, up.logprobs) if s.with_logprobs else None))
        for call, fragments in up.calls:
            k = s.choices[i].calls.index(call)
            out.append(ChunkChoice(i, Delta(tool_calls=[ToolCallDelta(
                k, FunctionDelta(call.function.name, ""), call.id, "function")])))
            out += [ChunkChoice(i, Delta(tool_calls=[ToolCallDelta(k, FunctionDelta(arguments=f))]))
                    for f in fragments]
        return out

    head = [ChunkChoice(i, Delta(role="assistant", content=None if forced_calls else ""))
            for i in range(len(s.choices))]
    return _events(s, head, items, lambda i, reason: ChunkChoice(i, Delta(), reason))


def completion_events(s: Stream, echo: bool) -> AsyncIterator[bytes]:
    def items(i: int, up: Update, offset: int) -> list[CompletionChoice]:
        if not (up.text or (s.with_logprobs and up.logprobs)):
            return []
        return [CompletionChoice(i, up.text, None, completion_logprobs(s.tokenizer, up.logprobs, offset)
                                 if s.with_logprobs else None)]

    head = [CompletionChoice(i, c.text, None) for i, c in enumerate(s.choices)] if echo else []
    return _events(s, head, items, lambda i, reason: CompletionChoice(i, "", reason))
