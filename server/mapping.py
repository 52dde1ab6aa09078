"""Request mapping: a validated body becomes prompt token ids, `SamplingParams` and a grammar.

Owns: `Generation`, `chat_generation`, `completion_generation`. Imports: anyio, server.{protocol,
deployment,grammar,tools}, engine (SamplingParams), tokenizer. Used by: server.routes.

Chat: the messages (and tools) go through the chat template; `response_format` and `tools`
become a grammar. Building the grammar checks and compiles JSON schemas, which is work for a
worker thread, never for the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from engine import SamplingParams
from server.deployment import Deployment
from server.grammar import ANY_JSON_OBJECT, CompileError, LLGrammar, compile_schema
from server.protocol import (ApiError, ChatRequest, CompletionRequest, ImageUrlPart, InnerError,
                             JsonObjectFormat, JsonSchemaFormat, NamedToolChoice, TextPart,
                             UserMessage, field_error)
from server.tools import MAX_PARALLEL_CALLS, ToolPlan, ToolSyntax, prompt_messages, tool_grammar
from tokenizer import TemplateError, Tokenizer


@dataclass
class Generation:
    """What the engine is asked for: each prompt's ids, n choices of each, how they sample,
    and (chat) the grammar that constrains them and the tool syntax their replies are read in."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int
    stops: list[str]
    grammar: LLGrammar | None = None
    tools: ToolSyntax | None = None  # replies are parsed for calls in this syntax
    texts: list[str] | None = None  # completions: each prompt's text, for echo


# ---------------------------------------------------------------- chat


async def chat_generation(req: ChatRequest, dep: Deployment) -> Generation:
    """The chat request mapped; its tools and schemas are checked and compiled into a grammar
    in a worker thread, before the prompt is rendered."""
    _check_chat_features(req)
    plan = _tool_plan(req, dep)
    answer = _answer_schema(req)

    def build() -> LLGrammar | None:
        _check_tools(req, dep)
        grammar = compile_schema(dep.grammars, *answer) if answer is not None else None
        if plan is None:
            return grammar
        try:  # each schema compiled alone above; together they can still be too much
            return dep.grammars.compile(tool_grammar(plan, answer and answer[:2],
                                                     dep.grammars.special_token))
        except CompileError as e:
            raise field_error("InvalidParameter", "InvalidSchema", "tools",
                              f"these tools cannot be served together: {e}") from None

    grammar = await anyio.to_thread.run_sync(build) if plan or answer or req.tools else None
    messages, tools = prompt_messages(_template_messages(req), plan, dep.tool_syntax,
                                      dep.tools_native)
    try:
        prompt = dep.tokenizer.encode(dep.template.render(messages, tools=tools))
    except TemplateError as e:
        raise ApiError(422, "InvalidParameter", f"messages: {e}", "messages") from None
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    n_top = (req.top_logprobs or 0) if req.logprobs else None
    params = _params(req, dep, len(prompt), max_tokens,
                     0.7 if req.temperature is None else req.temperature, n_top)
    return Generation([prompt], params, req.n or 1, _stops(req.stop), grammar,
                      plan.syntax if plan else None)


def _check_chat_features(req: ChatRequest) -> None:
    if req.modalities and "audio" in req.modalities:
        raise ApiError(422, "ModalityNotSupported", "this model produces text only", "modalities")
    for i, m in enumerate(req.messages):
        if isinstance(m, UserMessage) and not isinstance(m.content, str):
            for j, part in enumerate(m.content):
                if not isinstance(part, TextPart):
                    kind = "images" if isinstance(part, ImageUrlPart) else "audio"
                    raise ApiError(422, "ModalityNotSupported",
                                   f"this model reads text only, not {kind}",
                                   f"messages[{i}].content[{j}]")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(422, "InvalidParameter", "top_logprobs needs logprobs: true", "top_logprobs")


def _answer_schema(req: ChatRequest) -> tuple[dict[str, Any], bool, str] | None:
    """(schema, strict, its JSON path) of a JSON response_format, None for text."""
    fmt = req.response_format
    if isinstance(fmt, JsonObjectFormat):
        return ANY_JSON_OBJECT, False, "response_format"
    if isinstance(fmt, JsonSchemaFormat):
        return fmt.json_schema.schema, bool(fmt.json_schema.strict), "response_format.json_schema.schema"
    return None


def _tool_plan(req: ChatRequest, dep: Deployment) -> ToolPlan | None:
    """What tool_choice asks for (None: no calls), after checking it against the tools."""
    tools = req.tools or []
    choice = req.tool_choice or ("auto" if tools else "none")
    if choice != "none" and not tools:
        raise field_error("InvalidParameter", "InvalidValue", "tool_choice",
                          "asks for a tool call but no tools were given")
    if choice == "none":
        return None
    names = [t.function.name for t in tools]
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in names:
            raise field_error("InvalidParameter", "InvalidValue", "tool_choice.function.name",
                              f"{name!r} is not one of the tools: {', '.join(names)}")
        tools = [tools[names.index(name)]]
    syntax = dep.tool_syntax
    parallel = req.parallel_tool_calls is not False and syntax.parallel
    return ToolPlan(syntax, [_tool_dict(t) for t in tools],
                    "named" if isinstance(choice, NamedToolChoice) else choice,
                    MAX_PARALLEL_CALLS if parallel else 1,
                    tuple(bool(t.function.strict) for t in tools))


def _tool_dict(tool) -> dict[str, Any]:
    """A tool as templates and grammars see it; no `parameters` means no arguments."""
    f = tool.function
    function: dict[str, Any] = {"name": f.name}
    if f.description is not None:
        function["description"] = f.description
    params = f.parameters if f.parameters is not None else {"properties": {}}
    function["parameters"] = {"type": "object", **params} if "type" not in params else params
    return {"type": "function", "function": function}


def _check_tools(req: ChatRequest, dep: Deployment) -> None:
    """Every tool's name is unique and its parameters a JSON schema of an object that the
    grammar can serve: each is checked and compiled on its own, so an error names its tool."""
    seen: set[str] = set()
    for i, tool in enumerate(req.tools or []):
        f, target = tool.function, f"tools[{i}].function"
        if f.name in seen:
            raise field_error("InvalidParameter", "InvalidValue", f"{target}.name",
                              f"{f.name!r} is given twice")
        seen.add(f.name)
        params = _tool_dict(tool)["function"]["parameters"]
        if params.get("type") != "object":
            raise field_error("InvalidParameter", "InvalidValue", f"{target}.parameters.type",
                              "the arguments must be a JSON object (type: object)")
        compile_schema(dep.grammars, params, bool(f.strict), f"{target}.parameters")


def _template_messages(req: ChatRequest) -> list[dict[str, Any]]:
    out = []
    for m in req.messages:
        role = "system" if m.__struct_config__.tag == "developer" else m.__struct_config__.tag
        msg: dict[str, Any] = {"role": role, "content": _text(m.content)}
        if getattr(m, "tool_calls", None):
            msg["tool_calls"] = [{"id": t.id, "type": t.type, "function": {
                "name": t.function.name, "arguments": t.function.arguments}} for t in m.tool_calls]
        if role == "tool":
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content)


# ---------------------------------------------------------------- completions


def completion_generation(req: CompletionRequest, dep: Deployment) -> Generation:
    if req.suffix:
        raise ApiError(422, "ParameterNotSupported", "suffix is not supported", "suffix")
    n = req.n or 1
    if req.best_of is not None and req.best_of != n:
        raise ApiError(422, "ParameterNotSupported", "best_of different from n is not supported",
                       "best_of")
    prompts, texts = _prompts(req, dep.tokenizer)
    max_tokens = 256 if req.max_tokens is None else req.max_tokens
    params = None
    for p in prompts:  # every prompt must fit; the parameters are the same for all
        params = _params(req, dep, len(p), max_tokens, 1.0 if req.temperature is None
                         else req.temperature, req.logprobs)
    return Generation(prompts, params, n, _stops(req.stop), texts=texts)


def _prompts(req: CompletionRequest, tok: Tokenizer) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of each prompt: a string, strings, token ids, or lists of token ids."""
    p = "<|endoftext|>" if req.prompt is None else req.prompt
    if isinstance(p, str) or (p and all(isinstance(x, int) for x in p)):
        items = [p]  # one prompt: a string or a list of token ids
    else:
        items = p  # several: strings or token-id lists, not mixed
    if not items or len({type(x) for x in items}) != 1:
        raise ApiError(422, "InvalidParameter", "prompt: a string, a list of strings, a list of "
                       "token ids, or a list of token-id lists; not empty, not a mix", "prompt")
    ids, texts = [], []
    for item in items:
        if isinstance(item, str):
            ids.append(tok.encode(item))
            texts.append(item)
        else:
            if not item or not all(isinstance(t, int) and 0 <= t < tok.vocab_size for t in item):
                raise ApiError(422, "InvalidParameter",
                               f"prompt: token ids must be in [0, {tok.vocab_size})", "prompt")
            ids.append(list(item))
            texts.append(tok.decode(item, skip_special=False))
    if any(not x for x in ids):
        raise ApiError(422, "InvalidParameter", "prompt: must not be empty", "prompt")
    return ids, texts


# ---------------------------------------------------------------- shared


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    if not bias:
        return ()
    if len(bias) > 1024:
        raise ApiError(422, "InvalidParameter", "logit_bias: at most 1024 entries", "logit_bias")
    out = []
    for key, value in bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab:
            raise ApiError(422, "InvalidParameter",
                           f"logit_bias: {key!r} is not a token id in [0, {vocab})", "logit_bias",
                           InnerError("InvalidValue", ["body", "logit_bias", key], key))
        out.append((int(key), float(value)))
    return tuple(out)


def _params(req: ChatRequest | CompletionRequest, dep: Deployment, n_prompt: int,
            max_tokens: int | None, temperature: float, logprobs: int | None) -> SamplingParams:
    room = dep.context - n_prompt
    if room <= 0:
        raise ApiError(400, "ContextLengthExceeded",
                       f"the prompt has {n_prompt} tokens; the context holds {dep.context}",
                       "messages" if isinstance(req, ChatRequest) else "prompt")
    if max_tokens is not None and max_tokens > room:
        raise ApiError(400, "ContextLengthExceeded",
                       f"the prompt has {n_prompt} tokens and max_tokens is {max_tokens}: "
                       f"{n_prompt + max_tokens} is over the context of {dep.context}", "max_tokens")
    n = req.n or 1
    if n > dep.client.engine.config.max_seqs:
        raise ApiError(422, "InvalidParameter", f"n={n} is over this server's --max-seqs "
                       f"{dep.client.engine.config.max_seqs}", "n")
    return SamplingParams(
        temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0, min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        logit_bias=_logit_bias(req.logit_bias, dep.tokenizer.vocab_size), seed=req.seed,
        max_tokens=room if max_tokens is None else max_tokens, min_tokens=req.min_tokens or 0,
        stop_token_ids=dep.tokenizer.eos_ids, ignore_eos=bool(req.ignore_eos), logprobs=logprobs)
