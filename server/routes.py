"""Route handlers: one function per endpoint, and the route table.

Owns: `Deployment`, `Call`, the handlers, `ROUTES`. Imports: server.{protocol,http,engine_client,
metrics}, engine (SamplingParams), tokenizer. Used by: server.app.

A generation handler validates the body (protocol), renders and tokenizes the prompt, checks
the context, maps the request onto `SamplingParams`, and turns the engine's token ids back into
text per choice: UTF-8 safe (`TextStream`), stop strings held back (`StopMatcher`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from msgspec import UNSET

from engine import RequestOutput, SamplingParams
from engine.request import TokenLogprob
from server.engine_client import EngineClient, EngineFault
from server.http import HttpRequest, HttpResponse
from server.metrics import Metrics
from server.protocol import (SSE_DONE, ApiError, ChatChoice, ChatCompletion, ChatCompletionChunk,
                             ChatMessageOut, ChatRequest, ChoiceLogprobs, ChunkChoice, Completion,
                             CompletionChoice, CompletionLogprobs, CompletionRequest, Delta,
                             ErrorBody, ErrorResponse, ImageUrlPart, InnerError, JsonObjectFormat,
                             JsonSchemaFormat, ModelCard, ModelInfo, ModelList, PromptTokensDetails,
                             TextPart, TokenLogprobOut, TopLogprob, Usage, UserMessage,
                             decode_body, encode, sse)
from tokenizer import ChatTemplate, StopMatcher, TemplateError, TextStream, Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class Deployment:
    """One served model: its engine thread, tokenizer, chat template and identity."""

    name: str
    client: EngineClient
    tokenizer: Tokenizer
    template: ChatTemplate
    fingerprint: str  # "fp_" + digest of weights, weight format and engine version
    context: int
    provider: str = "ember"


@dataclass
class Call:
    """One HTTP request on its way through a handler, and what the access log reports of it."""

    request: HttpRequest
    request_id: str
    deployments: dict[str, Deployment]  # lower-case name -> deployment
    metrics: Metrics
    policy: str = "error"  # extra-parameters
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None

    def deployment(self, model: str | None) -> Deployment:
        """azureml-model-deployment header, else the body's model (case-insensitive); with one
        deployment any model name is accepted."""
        name = self.request.headers.get("azureml-model-deployment") or model
        if len(self.deployments) == 1 and not self.request.headers.get("azureml-model-deployment"):
            return next(iter(self.deployments.values()))
        if not name:
            return next(iter(self.deployments.values()))
        dep = self.deployments.get(name.lower())
        if dep is None:
            names = sorted(d.name for d in self.deployments.values())
            raise ApiError(404, "DeploymentNotFound",
                           f"deployment {name!r} does not exist; deployments: {', '.join(names)}",
                           target="model")
        return dep

    async def outputs(self, dep: Deployment, prompts: list[list[int]], params: SamplingParams,
                      n: int) -> AsyncIterator[RequestOutput]:
        """Engine outputs for this call, with time-to-first-token and token metrics."""
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        if params.max_tokens == 0:  # nothing to generate: every choice ends at once
            for i in range(len(prompts)):
                for j in range(n):
                    yield RequestOutput(f"{self.request_id}#{i}", [], "length", len(prompts[i]), j)
            return
        last = None
        async with aclosing(dep.client.generate(self.request_id, prompts, params, n)) as outs:
            async for out in outs:
                now = time.perf_counter()
                if last is None:
                    self.ttft = now - self.started
                    self.metrics.ttft.observe(self.ttft)
                else:
                    self.metrics.itl.observe(now - last)
                last = now
                self.cached_tokens += out.n_cached
                self.metrics.prefix_hit_tokens.inc(out.n_cached)
                self.completion_tokens += len(out.new_ids)
                self.metrics.generation_tokens.inc(len(out.new_ids))
                yield out


class ChoiceText:
    """The text of one choice as its tokens arrive: UTF-8 safe, stop strings never sent."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str], prefix: str = ""):
        self._stream = TextStream(tokenizer)
        self._stops = StopMatcher(stops)
        self.parts = [prefix] if prefix else []
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, out: RequestOutput) -> tuple[str, list[TokenLogprob]]:
        """Take one step's output: (text that may be sent now, logprobs of its tokens)."""
        if self.finish:  # already ended by a stop string; the engine may still be running it
            return "", []
        piece = "".join(self._stream.push(t) for t in out.new_ids)
        text, hit = self._stops.push(piece)
        if hit:
            self.finish = "stop"
        elif out.finish_reason:
            self.finish = out.finish_reason
            text += self._stops.flush()
        self.parts.append(text)
        new_logprobs = out.logprobs or []
        self.logprobs += new_logprobs
        return text, new_logprobs


# ---------------------------------------------------------------- shared request mapping


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


def _usage(call: Call) -> Usage:
    return Usage(call.prompt_tokens, call.completion_tokens,
                 call.prompt_tokens + call.completion_tokens,
                 PromptTokensDetails(cached_tokens=call.cached_tokens))


def _check_queue(call: Call, dep: Deployment) -> None:
    """Back-pressure: refuse at once, before any work, when the engine's queue is full."""
    if dep.client.full:
        call.metrics.rejected.inc()
        raise ApiError(429, "TooManyRequests", f"the server is busy: {dep.client.queue_depth} "
                       "requests are waiting; retry shortly", headers=(("retry-after", "1"),))


def _error_event(call: Call, e: EngineFault) -> bytes:
    return sse(ErrorResponse(ErrorBody("InternalServerError",
                                       f"request {call.request_id} failed: {e}", type="server_error")))


def _json(value) -> HttpResponse:
    return HttpResponse(200, [("content-type", "application/json")], encode(value))


def _sse(events: AsyncIterator[bytes]) -> HttpResponse:
    return HttpResponse(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")],
                        stream=events)


# ---------------------------------------------------------------- chat


async def chat_completions(call: Call) -> HttpResponse:
    req = decode_body(call.request.body, ChatRequest, call.policy)
    dep = call.deployment(req.model)
    _check_chat_features(req)
    if req.user_security_context:  # accepted and logged, not used (API.md)
        logger.info("%s user_security_context=%s", call.request_id, encode(req.user_security_context).decode())
    try:
        prompt = dep.tokenizer.encode(dep.template.render(_template_messages(req)))
    except TemplateError as e:
        raise ApiError(422, "InvalidParameter", f"messages: {e}", "messages") from None
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    n_top = (req.top_logprobs or 0) if req.logprobs else None
    params = _params(req, dep, len(prompt), max_tokens,
                     0.7 if req.temperature is None else req.temperature, n_top)
    n = req.n or 1
    choices = [ChoiceText(dep.tokenizer, _stops(req.stop)) for _ in range(n)]
    created = int(time.time())
    _check_queue(call, dep)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse(_chat_events(call, dep, prompt, params, choices, created, include_usage))
    await _run_to_end(call, dep, [prompt], params, choices)
    return _json(ChatCompletion(
        call.request_id, created, dep.name, dep.fingerprint,
        [ChatChoice(i, ChatMessageOut(c.text), c.finish,
                    _chat_logprobs(dep.tokenizer, c.logprobs) if n_top is not None else None)
         for i, c in enumerate(choices)],
        _usage(call)))


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
    if isinstance(req.response_format, (JsonObjectFormat, JsonSchemaFormat)):
        raise ApiError(422, "ParameterNotSupported",
                       "response_format json_object / json_schema is not supported yet",
                       "response_format")
    if req.tools:
        raise ApiError(422, "ParameterNotSupported", "tools are not supported yet", "tools")
    if req.tool_choice not in (None, "none", "auto"):
        raise ApiError(422, "InvalidParameter", "tool_choice names a tool but no tools were given",
                       "tool_choice")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(422, "InvalidParameter", "top_logprobs needs logprobs: true", "top_logprobs")


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content)


def _template_messages(req: ChatRequest) -> list[dict]:
    out = []
    for m in req.messages:
        role = "system" if m.__struct_config__.tag == "developer" else m.__struct_config__.tag
        msg = {"role": role, "content": _text(m.content)}
        if getattr(m, "tool_calls", None):
            msg["tool_calls"] = [{"id": t.id, "type": t.type, "function": {
                "name": t.function.name, "arguments": t.function.arguments}} for t in m.tool_calls]
        if role == "tool":
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _chat_logprobs(tok: Tokenizer, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    def entry(token_id: int, lp: float) -> tuple[str, float, list[int]]:
        raw = tok.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), lp, list(raw)

    return ChoiceLogprobs([
        TokenLogprobOut(*entry(t.token_id, t.logprob), [TopLogprob(*entry(i, lp)) for i, lp in t.top])
        for t in logprobs])


async def _run_to_end(call: Call, dep: Deployment, prompts: list[list[int]],
                      params: SamplingParams, choices: list[ChoiceText]) -> None:
    n = len(choices) // len(prompts)
    try:
        async with aclosing(call.outputs(dep, prompts, params, n)) as outs:
            async for out in outs:
                choices[_choice_index(out, n)].feed(out)
                if all(c.finish for c in choices):
                    break
    except EngineFault as e:
        raise ApiError(500, "InternalServerError", f"request {call.request_id} failed: {e}") from None


def _choice_index(out: RequestOutput, n: int) -> int:
    return int(out.request_id.rsplit("#", 1)[1]) * n + out.index


async def _events(call: Call, dep: Deployment, prompts: list[list[int]], params: SamplingParams,
                  choices: list[ChoiceText], include_usage: bool, make, head: list, piece, end):
    """The SSE events of a chat or completion stream; `make(items, usage)` builds a chunk,
    `piece(i, text, logprobs, offset)` and `end(i, reason)` build a chunk's choice item."""
    n = len(choices) // len(prompts)

    def chunk(items: list, usage=UNSET) -> bytes:
        return sse(make(items, None if include_usage else usage))  # null everywhere, or absent

    for item in head:
        yield chunk([item])
    try:
        async with aclosing(call.outputs(dep, prompts, params, n)) as outs:
            async for out in outs:
                i = _choice_index(out, n)
                c = choices[i]
                if c.finish:
                    continue
                offset = len(c.text)
                text, lps = c.feed(out)
                if text or (params.logprobs is not None and lps):
                    yield chunk([piece(i, text, lps, offset)])
                if c.finish:
                    last = all(x.finish for x in choices)
                    yield chunk([end(i, c.finish)], _usage(call) if last else UNSET)
                    if last:
                        break
        if include_usage:  # OpenAI's shape: one more chunk, no choices, the usage
            yield sse(make([], _usage(call)))
    except EngineFault as e:
        yield _error_event(call, e)
    yield SSE_DONE


def _chat_events(call: Call, dep: Deployment, prompt: list[int], params: SamplingParams,
                 choices: list[ChoiceText], created: int, include_usage: bool):
    with_logprobs = params.logprobs is not None

    def make(items, usage):
        return ChatCompletionChunk(call.request_id, created, dep.name, dep.fingerprint, items,
                                   usage=usage)

    def piece(i, text, lps, _offset):
        return ChunkChoice(i, Delta(content=text), None,
                           _chat_logprobs(dep.tokenizer, lps) if with_logprobs else None)

    head = [ChunkChoice(i, Delta(role="assistant", content="")) for i in range(len(choices))]
    return _events(call, dep, [prompt], params, choices, include_usage, make, head, piece,
                   lambda i, reason: ChunkChoice(i, Delta(), reason))


# ---------------------------------------------------------------- completions


async def completions(call: Call) -> HttpResponse:
    req = decode_body(call.request.body, CompletionRequest, call.policy)
    dep = call.deployment(req.model)
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
    choices = [ChoiceText(dep.tokenizer, _stops(req.stop), texts[i // n] if req.echo else "")
               for i in range(len(prompts) * n)]
    created = int(time.time())
    _check_queue(call, dep)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _sse(_completion_events(call, dep, prompts, params, choices, created, include_usage,
                                       req.echo))
    await _run_to_end(call, dep, prompts, params, choices)
    return _json(Completion(
        call.request_id, created, dep.name, dep.fingerprint,
        [CompletionChoice(i, c.text, c.finish, _completion_logprobs(dep.tokenizer, c.logprobs,
                                                                    len(c.parts[0]) if req.echo and c.parts else 0)
                          if req.logprobs is not None else None)
         for i, c in enumerate(choices)], usage=_usage(call)))


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


def _completion_logprobs(tok: Tokenizer, logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    tokens, values, tops, offsets = [], [], [], []
    for t in logprobs:
        piece = tok.token_bytes(t.token_id).decode("utf-8", errors="replace")
        tokens.append(piece)
        values.append(t.logprob)
        tops.append({tok.token_bytes(i).decode("utf-8", errors="replace"): lp for i, lp in t.top})
        offsets.append(offset)
        offset += len(piece)
    return CompletionLogprobs(tokens, values, tops, offsets)


def _completion_events(call: Call, dep: Deployment, prompts: list[list[int]],
                       params: SamplingParams, choices: list[ChoiceText], created: int,
                       include_usage: bool, echo: bool):
    with_logprobs = params.logprobs is not None

    def make(items, usage):
        return Completion(call.request_id, created, dep.name, dep.fingerprint, items, usage=usage)

    def piece(i, text, lps, offset):
        return CompletionChoice(i, text, None, _completion_logprobs(dep.tokenizer, lps, offset)
                                if with_logprobs else None)

    head = [CompletionChoice(i, c.text, None) for i, c in enumerate(choices)] if echo else []
    return _events(call, dep, prompts, params, choices, include_usage, make, head, piece,
                   lambda i, reason: CompletionChoice(i, "", reason))


# ---------------------------------------------------------------- model info


async def info(call: Call) -> HttpResponse:
    dep = call.deployment(call.request.query.get("model"))
    return _json(ModelInfo(dep.name, dep.provider))


async def list_models(call: Call) -> HttpResponse:
    created = int(time.time())
    return _json(ModelList([ModelCard(d.name, created) for d in call.deployments.values()]))


async def metrics(call: Call) -> HttpResponse:
    return HttpResponse(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        call.metrics.render())


# path -> (method, handler); the API routes are served under every prefix of API.md
API_ROUTES = {
    "/chat/completions": ("POST", chat_completions),
    "/completions": ("POST", completions),
    "/info": ("GET", info),
}
PREFIXES = ("", "/models", "/v1")
ROUTES = {prefix + path: route for prefix in PREFIXES for path, route in API_ROUTES.items()}
ROUTES["/v1/models"] = ("GET", list_models)
ROUTES["/metrics"] = ("GET", metrics)
