"""Route handlers: one short function per endpoint, and the route table.

Owns: `Call`, the handlers, `ROUTES`. Imports: server.{protocol,http,deployment,mapping,output,
engine_client,metrics}, engine. Used by: server.app.

A generation handler validates the body (protocol), maps it onto prompt ids, `SamplingParams`
and a grammar (mapping; the grammar is compiled in a worker thread), runs it in the engine
(engine_client) and assembles what comes back into a response or a stream (output).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from engine import RequestOutput
from server.deployment import Deployment
from server.engine_client import EngineFault
from server.http import HttpRequest, HttpResponse
from server.mapping import Generation, chat_generation, completion_generation
from server.metrics import Metrics
from server.output import (Choice, Stream, chat_events, chat_logprobs, choice_index,
                           completion_events, completion_logprobs)
from server.protocol import (ApiError, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatRequest,
                             Completion, CompletionChoice, CompletionRequest, ModelCard, ModelInfo,
                             ModelList, PromptTokensDetails, Usage, decode_body, encode)

logger = logging.getLogger(__name__)


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
    choices: list[Choice] = field(default_factory=list)  # the reply's, once it has them
    ttft: float | None = None

    @property
    def completion_tokens(self) -> int:
        """The reply's tokens: a choice's count ends at the token completing a stop string."""
        return sum(c.n_tokens for c in self.choices)

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

    async def outputs(self, dep: Deployment, gen: Generation) -> AsyncIterator[RequestOutput]:
        """Engine outputs for this call, with time-to-first-token and token metrics."""
        prompts, params, n = gen.prompts, gen.params, gen.n
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        if params.max_tokens == 0:  # nothing to generate: every choice ends at once
            for i in range(len(prompts)):
                for j in range(n):
                    yield RequestOutput(f"{self.request_id}#{i}", [], "length", len(prompts[i]), j)
            return
        last = None
        async with aclosing(dep.client.generate(self.request_id, prompts, params, n, gen.grammar)) as outs:
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
                self.metrics.generation_tokens.inc(len(out.new_ids))
                yield out

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens,
                     self.prompt_tokens + self.completion_tokens,
                     PromptTokensDetails(cached_tokens=self.cached_tokens))

    def check_queue(self, dep: Deployment) -> None:
        """Back-pressure: refuse at once, before any work, when the engine's queue is full."""
        if dep.client.full:
            self.metrics.rejected.inc()
            raise ApiError(429, "TooManyRequests", f"the server is busy: {dep.client.queue_depth} "
                           "requests are waiting; retry shortly", headers=(("retry-after", "1"),))


async def _run_to_end(call: Call, dep: Deployment, gen: Generation, choices: list[Choice]) -> None:
    try:
        async with aclosing(call.outputs(dep, gen)) as outs:
            async for out in outs:
                choices[choice_index(out, gen.n)].feed(out)
                if all(c.finish for c in choices):
                    break
    except EngineFault as e:
        raise ApiError(500, "InternalServerError", f"request {call.request_id} failed: {e}") from None


def _json(value) -> HttpResponse:
    return HttpResponse(200, [("content-type", "application/json")], encode(value))


def _sse(events: AsyncIterator[bytes]) -> HttpResponse:
    return HttpResponse(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")],
                        stream=events)


def _include_usage(req: ChatRequest | CompletionRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


# ---------------------------------------------------------------- handlers


async def chat_completions(call: Call) -> HttpResponse:
    req = decode_body(call.request.body, ChatRequest, call.policy)
    dep = call.deployment(req.model)
    if req.user_security_context:  # accepted and logged, not used (API.md)
        logger.info("%s user_security_context=%s", call.request_id, encode(req.user_security_context).decode())
    call.check_queue(dep)
    gen = await chat_generation(req, dep)
    choices = call.choices = [Choice(dep.tokenizer, gen.stops, tools=gen.tools) for _ in range(gen.n)]
    created = int(time.time())
    with_logprobs = gen.params.logprobs is not None
    if req.stream:
        forced = gen.tools is not None and req.tool_choice not in (None, "auto")
        return _sse(chat_events(Stream(
            call.request_id, call.outputs(dep, gen), choices, gen.n, _include_usage(req),
            call.usage, dep.tokenizer, with_logprobs,
            lambda items, usage: ChatCompletionChunk(call.request_id, created, dep.name,
                                                     dep.fingerprint, items, usage=usage)), forced))
    await _run_to_end(call, dep, gen, choices)
    return _json(ChatCompletion(
        call.request_id, created, dep.name, dep.fingerprint,
        [ChatChoice(i, c.message(), c.finish,
                    chat_logprobs(dep.tokenizer, c.logprobs) if with_logprobs else None)
         for i, c in enumerate(choices)],
        call.usage()))


async def completions(call: Call) -> HttpResponse:
    req = decode_body(call.request.body, CompletionRequest, call.policy)
    dep = call.deployment(req.model)
    gen = completion_generation(req, dep)
    call.check_queue(dep)
    echo = bool(req.echo)
    choices = call.choices = [Choice(dep.tokenizer, gen.stops, gen.texts[i // gen.n] if echo else "")
                              for i in range(len(gen.prompts) * gen.n)]
    created = int(time.time())
    with_logprobs = req.logprobs is not None
    if req.stream:
        return _sse(completion_events(Stream(
            call.request_id, call.outputs(dep, gen), choices, gen.n, _include_usage(req),
            call.usage, dep.tokenizer, with_logprobs,
            lambda items, usage: Completion(call.request_id, created, dep.name, dep.fingerprint,
                                            items, usage=usage)), echo))
    await _run_to_end(call, dep, gen, choices)
    return _json(Completion(
        call.request_id, created, dep.name, dep.fingerprint,
        [CompletionChoice(i, c.text, c.finish,
                          completion_logprobs(dep.tokenizer, c.logprobs,
                                              len(c.parts[0]) if echo and c.parts else 0)
                          if with_logprobs else None)
         for i, c in enumerate(choices)], usage=call.usage()))


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
