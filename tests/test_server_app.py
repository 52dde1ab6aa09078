"""The application layer in process (no sockets): routes, headers, auth, extra-parameters,
validation, response and stream shapes, on two tiny deployments."""

import json

import anyio
import pytest

from server.app import App
from server.config import ServerConfig
from server.http import HttpRequest
from tests.conftest import tiny_deployment

pytestmark = pytest.mark.anyio

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture
async def app():
    app = App(ServerConfig(api_keys=("k1", "k2")))
    async with anyio.create_task_group() as tg:
        for name, seed in (("tiny", 0), ("Other", 1)):
            dep = tiny_deployment(name, seed=seed)
            app.add(dep)
            tg.start_soon(dep.client.run)
        app.ready = True
        yield app
        tg.cancel_scope.cancel()


async def call(app, method, path, body=None, headers=None, query=None, key="k1"):
    h = {"content-type": "application/json"}
    if key:
        h["api-key"] = key
    h.update(headers or {})
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    resp = await app.handle(HttpRequest(method, path, query or {}, h, raw))
    if resp.stream is not None:
        resp.body = b"".join([chunk async for chunk in resp.stream])
    return resp


def err(resp):
    return json.loads(resp.body)["error"]


def header(resp, name):
    return dict(resp.headers).get(name)


def events(body: bytes):
    """Split an SSE body, checking the framing: `data: <json>\\n\\n` events, [DONE] last."""
    assert body.endswith(b"data: [DONE]\n\n")
    parts = body.split(b"\n\n")
    assert parts[-1] == b""
    out = []
    for p in parts[:-2]:
        assert p.startswith(b"data: ") and b"\n" not in p and b"\r" not in p
        out.append(json.loads(p[6:]))
    return out


@pytest.mark.parametrize("prefix", ["", "/models", "/v1"])
async def test_chat_under_every_prefix(app, prefix):
    resp = await call(app, "POST", f"{prefix}/chat/completions", CHAT)
    assert resp.status == 200, resp.body
    data = json.loads(resp.body)
    assert data["object"] == "chat.completion" and data["id"] == header(resp, "x-request-id")
    assert data["id"].startswith("chatcmpl-") and data["system_fingerprint"].startswith("fp_")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"] is None and choice["logprobs"] is None
    usage = data["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert usage["prompt_tokens_details"] == {"audio_tokens": 0, "cached_tokens": 0}


async def test_routes_methods_and_health(app):
    assert (await call(app, "GET", "/nope")).status == 404
    resp = await call(app, "GET", "/chat/completions")
    assert resp.status == 405 and header(resp, "allow") == "POST"
    assert err(resp)["code"] == "MethodNotAllowed" and header(resp, "x-ms-error-code") == "MethodNotAllowed"
    resp = await call(app, "GET", "/health", key=None)
    assert resp.status == 200 and json.loads(resp.body) == {"status": "ok"}
    models = json.loads((await call(app, "GET", "/v1/models")).body)
    assert [m["id"] for m in models["data"]] == ["tiny", "Other"]
    info = json.loads((await call(app, "GET", "/models/info", query={"model": "other"})).body)
    assert info == {"model_name": "Other", "model_provider_name": "ember", "model_type": "chat-completion"}
    metrics = await call(app, "GET", "/metrics")
    assert b"ember_requests_total" in metrics.body and b"ember_kv_cache_usage_ratio" in metrics.body
    app.ready = False
    resp = await call(app, "GET", "/health")
    assert resp.status == 503 and header(resp, "retry-after") == "1"
    assert (await call(app, "POST", "/chat/completions", CHAT)).status == 503


async def test_auth(app):
    assert (await call(app, "POST", "/chat/completions", CHAT, key=None)).status == 401
    resp = await call(app, "POST", "/chat/completions", CHAT, key="wrong")
    assert resp.status == 401 and err(resp)["code"] == "Unauthorized"
    bearer = {"authorization": "Bearer k2"}
    assert (await call(app, "POST", "/chat/completions", CHAT, bearer, key=None)).status == 200
    both = {"authorization": "Bearer k1"}  # the Azure client sends both headers
    assert (await call(app, "POST", "/chat/completions", CHAT, both, key="k1")).status == 200
    assert (await call(app, "GET", "/metrics", key=None)).status == 401


async def test_api_version_and_request_ids(app):
    ok = await call(app, "POST", "/chat/completions", CHAT, query={"api-version": "2024-05-01-preview"},
                    headers={"x-ms-client-request-id": "abc"})
    assert ok.status == 200 and header(ok, "x-ms-client-request-id") == "abc"
    bad = await call(app, "POST", "/chat/completions", CHAT, query={"api-version": "2023-01-01"})
    assert bad.status == 400 and err(bad)["code"] == "UnsupportedApiVersion"
    assert "2025-05-01" in err(bad)["message"]


async def test_deployment_routing(app):
    a = json.loads((await call(app, "POST", "/chat/completions", {**CHAT, "model": "TINY"})).body)
    b = json.loads((await call(app, "POST", "/chat/completions", CHAT,
                               {"azureml-model-deployment": "other"})).body)
    assert a["model"] == "tiny" and b["model"] == "Other"
    resp = await call(app, "POST", "/chat/completions", {**CHAT, "model": "gpt-4"})
    assert resp.status == 404 and err(resp)["code"] == "DeploymentNotFound"
    assert "Other, tiny" in err(resp)["message"]


async def test_extra_parameters_policies(app):
    body = {**CHAT, "top_k": 5, "frobnicate": 1}
    resp = await call(app, "POST", "/chat/completions", body)
    assert resp.status == 400 and err(resp)["code"] == "ExtraParametersNotAllowed"
    assert "'frobnicate'" in err(resp)["message"] and "'top_k'" in err(resp)["message"]
    assert (await call(app, "POST", "/chat/completions", body, {"extra-parameters": "drop"})).status == 200
    resp = await call(app, "POST", "/chat/completions", body, {"extra-parameters": "pass-through"})
    assert resp.status == 422 and err(resp)["code"] == "ParameterNotSupported"
    assert err(resp)["target"] == "frobnicate"
    extras = {**CHAT, "top_k": 1, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True,
              "min_tokens": 2, "temperature": 1.0, "seed": 3}
    resp = await call(app, "POST", "/chat/completions", extras, {"extra-parameters": "pass-through"})
    assert resp.status == 200
    resp = await call(app, "POST", "/chat/completions", CHAT, {"extra-parameters": "ignore"})
    assert resp.status == 400 and err(resp)["code"] == "InvalidHeader"


@pytest.mark.parametrize("body,status,code,target", [
    (b"{not json", 400, "InvalidJson", None),
    (b"[1, 2]", 400, "InvalidJson", None),
    ({"messages": []}, 422, "InvalidParameter", "messages"),
    ({}, 422, "InvalidParameter", "messages"),
    ({**CHAT, "temperature": 3.5}, 422, "InvalidParameter", "temperature"),
    ({**CHAT, "top_p": 0}, 422, "InvalidParameter", "top_p"),
    ({**CHAT, "presence_penalty": -2.5}, 422, "InvalidParameter", "presence_penalty"),
    ({**CHAT, "max_tokens": "ten"}, 422, "InvalidParameter", "max_tokens"),
    ({**CHAT, "stop": [""]}, 422, "InvalidParameter", "stop[0]"),
    ({**CHAT, "stop": ["x"] * 17}, 422, "InvalidParameter", "stop"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "InvalidParameter", "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "InvalidParameter",
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     422, "ModalityNotSupported", "messages[0].content[0]"),
    ({**CHAT, "modalities": ["text", "audio"]}, 422, "ModalityNotSupported", "modalities"),
    ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}}},
     422, "InvalidParameter", "response_format.json_schema.schema.properties.a.type"),
    ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "object", "if": {"required": ["a"]}}}}},
     422, "ParameterNotSupported", "response_format.json_schema.schema.if"),
    ({**CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "required": "a"}}}]}, 422,
     "InvalidParameter", "tools[0].function.parameters.required"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "array"}}}]}, 422, "InvalidParameter", "tools[0].function.parameters.type"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}] * 2}, 422,
     "InvalidParameter", "tools[1].function.name"),
    ({**CHAT, "tool_choice": "required"}, 422, "InvalidParameter", "tool_choice"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, 422, "InvalidParameter",
     "tool_choice.function.name"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 422,
     "InvalidParameter", "tools[0].function.name"),
    ({**CHAT, "logit_bias": {"99999": 1}}, 422, "InvalidParameter", "logit_bias"),
    ({**CHAT, "top_logprobs": 2}, 422, "InvalidParameter", "top_logprobs"),
    ({**CHAT, "max_tokens": 500}, 400, "ContextLengthExceeded", "max_tokens"),
    ({"messages": [{"role": "user", "content": "x" * 600}]}, 400, "ContextLengthExceeded", "messages"),
])
async def test_validation_errors(app, body, status, code, target):
    resp = await call(app, "POST", "/chat/completions", body)
    assert resp.status == status, resp.body
    e = err(resp)
    assert e["code"] == code and header(resp, "x-ms-error-code") == code
    assert e["message"] and e["target"] == target and e["param"] == target
    if status == 422 and code == "InvalidParameter" and target not in ("logit_bias", "top_logprobs"):
        assert e["innererror"]["loc"][0] == "body" and e["details"][0]["code"]


async def test_validation_error_names_the_value(app):
    e = err(await call(app, "POST", "/chat/completions", {**CHAT, "temperature": 3.5}))
    assert e["innererror"] == {"code": "ValueOutOfRange", "loc": ["body", "temperature"], "value": "3.5"}
    assert "temperature" in e["message"] and "3.5" in e["message"]


async def test_all_roles_and_text_parts(app):
    messages = [{"role": "system", "content": "s"}, {"role": "developer", "content": "d"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": "ok?"}]
    resp = await call(app, "POST", "/chat/completions", {"messages": messages, "max_tokens": 2})
    assert resp.status == 200, resp.body


async def test_stream_framing_and_usage_placement(app):
    body = {**CHAT, "stream": True, "temperature": 0.8, "seed": 11, "n": 2}
    evs = events((await call(app, "POST", "/chat/completions", body)).body)
    assert all(e["object"] == "chat.completion.chunk" for e in evs)
    assert len({e["id"] for e in evs}) == 1
    firsts = evs[:2]
    assert [f["choices"][0]["delta"] for f in firsts] == [{"role": "assistant", "content": ""}] * 2
    finals = [e for e in evs if e["choices"][0]["finish_reason"]]
    assert sorted(f["choices"][0]["index"] for f in finals) == [0, 1]
    assert all(f["choices"][0]["delta"] == {} for f in finals)
    assert "usage" in evs[-1] and evs[-1] is finals[-1]  # default: usage on the last finish chunk
    assert all("usage" not in e for e in evs[:-1]) and all(e["choices"] for e in evs)
    assert evs[-1]["usage"]["completion_tokens"] == 12

    body["stream_options"] = {"include_usage": True}
    evs = events((await call(app, "POST", "/chat/completions", body)).body)
    assert all(e["usage"] is None for e in evs[:-1]) and evs[-1]["choices"] == []
    assert evs[-1]["usage"]["completion_tokens"] == 12


async def test_streamed_text_equals_non_streamed(app):
    body = {**CHAT, "temperature": 1.0, "seed": 42, "max_tokens": 20}
    whole = json.loads((await call(app, "POST", "/chat/completions", body)).body)
    evs = events((await call(app, "POST", "/chat/completions", {**body, "stream": True})).body)
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in evs)
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_stop_strings_are_never_sent(app):
    body = {**CHAT, "temperature": 1.0, "seed": 7, "max_tokens": 30}
    text = json.loads((await call(app, "POST", "/chat/completions", body)).body)["choices"][0]["message"]["content"]
    stop = text[10:13]
    assert len(stop) == 3
    for stream in (False, True):
        resp = await call(app, "POST", "/chat/completions", {**body, "stop": stop, "stream": stream})
        if stream:
            evs = events(resp.body)
            got = "".join(e["choices"][0]["delta"].get("content", "") for e in evs)
            reason = [e for e in evs if e["choices"][0]["finish_reason"]][0]["choices"][0]["finish_reason"]
        else:
            choice = json.loads(resp.body)["choices"][0]
            got, reason = choice["message"]["content"], choice["finish_reason"]
        assert got == text[:text.index(stop)] and reason == "stop"


async def test_logprobs_and_max_tokens_zero(app):
    body = {**CHAT, "logprobs": True, "top_logprobs": 3, "max_tokens": 3}
    choice = json.loads((await call(app, "POST", "/chat/completions", body)).body)["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 3 and all(len(c["top_logprobs"]) == 3 for c in content)
    assert all(c["logprob"] <= 0 and isinstance(c["bytes"], list) for c in content)
    assert content[0]["logprob"] == pytest.approx(content[0]["top_logprobs"][0]["logprob"])  # greedy
    data = json.loads((await call(app, "POST", "/chat/completions", {**CHAT, "max_tokens": 0})).body)
    assert data["choices"][0]["message"]["content"] == "" and data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 0


async def test_completions_prompt_shapes(app):
    base = {"max_tokens": 4, "temperature": 0}
    for prompt, n_choices in [("hello", 1), (["a", "bc"], 2), ([104, 105], 1), ([[104], [105, 106]], 2)]:
        resp = await call(app, "POST", "/completions", {**base, "prompt": prompt, "n": 2})
        data = json.loads(resp.body)
        assert resp.status == 200 and data["object"] == "text_completion"
        assert [c["index"] for c in data["choices"]] == list(range(2 * n_choices))
    data = json.loads((await call(app, "POST", "/completions",
                                  {**base, "prompt": "hi", "echo": True, "logprobs": 2})).body)
    choice = data["choices"][0]
    assert choice["text"].startswith("hi") and len(choice["logprobs"]["tokens"]) == 4
    assert choice["logprobs"]["text_offset"][0] == 2 and len(choice["logprobs"]["top_logprobs"][0]) == 2
    for bad, target in [({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "best_of": 3}, "best_of"),
                        ({"prompt": ["a", [1]]}, "prompt"), ({"prompt": [999]}, "prompt"),
                        ({"prompt": []}, "prompt")]:
        resp = await call(app, "POST", "/completions", bad)
        assert resp.status == 422 and err(resp)["target"] == target, bad
    evs = events((await call(app, "POST", "/completions", {**base, "prompt": "x", "stream": True})).body)
    assert all(e["object"] == "text_completion" for e in evs) and "usage" in evs[-1]


async def test_engine_fault_fails_that_request_only(app, monkeypatch):
    engine = app.deployments["tiny"].client.engine
    real_step, calls = engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 1:
            raise FloatingPointError("boom")
        return real_step()

    monkeypatch.setattr(engine, "step", failing_step)
    resp = await call(app, "POST", "/chat/completions", CHAT)
    assert resp.status == 500 and err(resp)["code"] == "InternalServerError"
    assert header(resp, "x-request-id") in err(resp)["message"] and "Traceback" not in err(resp)["message"]
    assert (await call(app, "POST", "/chat/completions", CHAT)).status == 200
    assert engine.cache.n_referenced == 0


async def test_leaving_a_stream_early_aborts_and_frees_the_slot(app):
    engine = app.deployments["tiny"].client.engine
    body = {**CHAT, "stream": True, "max_tokens": 100}
    resp = await app.handle(HttpRequest("POST", "/chat/completions", {}, {"api-key": "k1"},
                                        json.dumps(body).encode()))
    got = 0
    async for _ in resp.stream:
        got += 1
        if got == 3:
            break
    await resp.stream.aclose()
    for _ in range(100):
        if engine.cache.n_referenced == 0 and not engine.has_unfinished:
            break
        await anyio.sleep(0.01)
    assert engine.cache.n_referenced == 0 and not engine.has_unfinished


async def test_prefix_cache_is_reported_as_cached_tokens(app):
    system = {"role": "system", "content": "You are a careful assistant. " * 6}
    first = {"messages": [system, {"role": "user", "content": "one"}], "max_tokens": 4}
    data = json.loads((await call(app, "POST", "/chat/completions", first)).body)
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    second = {"messages": [system, {"role": "user", "content": "two"}], "max_tokens": 4}
    data = json.loads((await call(app, "POST", "/chat/completions", second)).body)
    cached = data["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 160 and cached % 16 == 0  # the shared system prompt, in whole blocks
    metrics = (await call(app, "GET", "/metrics")).body.decode()
    assert f"ember_prefix_cache_hit_tokens_total {float(cached)}" in metrics
    for name in ("ember_queue_depth", "ember_requests_running", "ember_kv_cache_usage_ratio",
                 "ember_engine_step_seconds_bucket", "ember_engine_step_tokens_bucket",
                 "ember_time_to_first_token_seconds_bucket", "ember_inter_token_latency_seconds"):
        assert name in metrics, name


async def test_full_queue_answers_429_at_once(app):
    client = app.deployments["tiny"].client
    client.max_queue = 0
    for stream in (False, True):
        resp = await call(app, "POST", "/chat/completions", {**CHAT, "stream": stream})
        assert resp.status == 429 and header(resp, "retry-after") == "1"
        assert err(resp)["code"] == "TooManyRequests"
    assert (await call(app, "POST", "/completions", {"prompt": "x", "max_tokens": 4})).status == 429
    client.max_queue = 64
    assert (await call(app, "POST", "/chat/completions", CHAT)).status == 200
