"""Structured output and tool calls through the application layer, on a tiny random model: the
grammar makes even a model that knows nothing answer in the asked-for shape."""

import json

import anyio
import jsonschema
import pytest

from server.app import App
from server.config import ServerConfig
from tests.conftest import tiny_deployment
from tests.test_server_app import call, events

pytestmark = pytest.mark.anyio

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pet": {"enum": ["cat", "dog", None]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    "score": {"type": "number"},
}, "required": ["name", "age", "pet", "tags", "score"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 6}}, "required": ["zone"]}}}
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "temperature": 0.9,
       "seed": 5}
SCHEMAS = {"PERSON": PERSON, "WEATHER": WEATHER["function"]["parameters"],
           "TIME": TIME["function"]["parameters"]}


@pytest.fixture
async def app():
    app = App(ServerConfig())
    dep = tiny_deployment("tiny", context=2048, max_seqs=8)
    app.add(dep)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dep.client.run)
        app.ready = True
        yield app
        tg.cancel_scope.cancel()


def schema_format(schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


async def chat(app, body):
    resp = await call(app, "POST", "/chat/completions", body, key=None)
    assert resp.status == 200, resp.body
    return json.loads(resp.body) if not body.get("stream") else events(resp.body)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_json_schema_answers_validate_and_end_with_stop(app, seed):
    data = await chat(app, {**ASK, "seed": seed, "n": 2, "response_format": schema_format(PERSON)})
    for choice in data["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


async def test_json_object_is_an_object_or_a_cut_prefix(app):
    data = await chat(app, {**ASK, "max_tokens": 400, "response_format": {"type": "json_object"}})
    choice = data["choices"][0]
    text = choice["message"]["content"]
    assert text.startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert choice["finish_reason"] == "length"


async def test_streamed_json_equals_non_streamed(app):
    body = {**ASK, "response_format": schema_format(PERSON, strict=False)}
    whole = (await chat(app, body))["choices"][0]["message"]["content"]
    evs = await chat(app, {**body, "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in evs) == whole


def _check_calls(message, allowed):
    assert message["content"] is None
    ids = set()
    for c in message["tool_calls"]:
        assert c["type"] == "function" and c["id"].startswith("call_") and c["id"] not in ids
        ids.add(c["id"])
        name = c["function"]["name"]
        assert name in allowed
        jsonschema.validate(json.loads(c["function"]["arguments"]), allowed[name])


@pytest.mark.parametrize("seed", [1, 2])
async def test_required_and_named_tool_choice_force_valid_calls(app, seed):
    tools = [WEATHER, TIME]  # up to 8 calls of about 60 byte tokens each
    data = await chat(app, {**ASK, "seed": seed, "max_tokens": 800, "tools": tools,
                            "tool_choice": "required"})
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    _check_calls(choice["message"], {"get_weather": SCHEMAS["WEATHER"], "get_time": SCHEMAS["TIME"]})
    named = {"type": "function", "function": {"name": "get_time"}}
    data = await chat(app, {**ASK, "seed": seed, "tools": tools, "tool_choice": named,
                            "parallel_tool_calls": False})
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and len(choice["message"]["tool_calls"]) == 1
    _check_calls(choice["message"], {"get_time": SCHEMAS["TIME"]})


async def test_auto_is_text_or_calls_and_none_is_text(app):
    for seed in range(4):
        data = await chat(app, {**ASK, "seed": seed, "max_tokens": 800, "tools": [WEATHER]})
        choice = data["choices"][0]
        if choice["message"]["tool_calls"]:
            assert choice["finish_reason"] == "tool_calls"
            _check_calls(choice["message"], {"get_weather": SCHEMAS["WEATHER"]})
        else:
            assert choice["finish_reason"] in ("stop", "length") and "<tool_call>" not in choice["message"]["content"]
    data = await chat(app, {**ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 10})
    assert data["choices"][0]["message"]["tool_calls"] is None


async def test_streamed_calls_rebuild_the_non_streamed_ones(app):
    body = {**ASK, "max_tokens": 800, "tools": [WEATHER, TIME], "tool_choice": "required"}
    whole = (await chat(app, body))["choices"][0]["message"]["tool_calls"]
    evs = await chat(app, {**body, "stream": True})
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    calls: dict[int, dict] = {}
    for e in evs:
        delta = e["choices"][0]["delta"]
        assert "content" not in delta or e is evs[0]  # forced calls stream no content
        for d in delta.get("tool_calls") or []:
            assert "index" in d and "function" in d
            if d["index"] not in calls:
                assert d["id"] and d["type"] == "function" and d["function"]["name"]
                calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
            else:
                assert "id" not in d and "name" not in d["function"]
            calls[d["index"]]["arguments"] += d["function"].get("arguments", "")
    assert evs[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [calls[i] for i in sorted(calls)] == [c["function"] for c in whole]


async def test_a_call_cut_by_max_tokens_is_not_returned(app):
    data = await chat(app, {**ASK, "max_tokens": 5, "tools": [WEATHER], "tool_choice": "required"})
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["tool_calls"] is None
    evs = await chat(app, {**ASK, "max_tokens": 5, "tools": [WEATHER], "tool_choice": "required",
                           "stream": True})
    assert not any(e["choices"][0]["delta"].get("tool_calls") for e in evs)
    assert evs[-1]["choices"][0]["finish_reason"] == "length"


async def test_tool_calls_and_results_reach_the_prompt(app):
    def history(city):
        call_ = {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "unit": "C"})}}
        return [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call_]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]

    a = await chat(app, {"messages": history("Paris"), "tools": [WEATHER], "max_tokens": 1})
    b = await chat(app, {"messages": history("Rome and Milan"), "tools": [WEATHER], "max_tokens": 1})
    assert b["usage"]["prompt_tokens"] - a["usage"]["prompt_tokens"] == len("Rome and Milan") - len("Paris")


KEYWORDS = {  # each JSON Schema feature real clients send, in a schema of its own
    "types_enum_const": {"type": "object", "properties": {
        "a": {"type": ["integer", "null"]}, "b": {"enum": ["x", "y", 3]}, "c": {"const": "fixed"},
        "d": {"type": "boolean"}}, "required": ["a", "b", "c", "d"]},
    "any_one_of": {"type": "object", "properties": {
        "v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 3}]},
        "w": {"oneOf": [{"type": "object", "properties": {"k": {"const": 1}}, "required": ["k"]},
                        {"type": "boolean"}]}},  # provably one of: llguidance serves it strictly
        "required": ["v", "w"]},
    "refs": {"$defs": {"leaf": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}},
                                "required": ["n"]}},
             "type": "object", "properties": {"first": {"$ref": "#/$defs/leaf"},
                                              "rest": {"type": "array", "items": {"$ref": "#/$defs/leaf"},
                                                       "minItems": 1, "maxItems": 2}},
             "required": ["first", "rest"]},
    "strings": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "short": {"type": "string", "minLength": 2, "maxLength": 4},
        "day": {"type": "string", "format": "date"}, "at": {"type": "string", "format": "time"},
        "when": {"type": "string", "format": "date-time"}, "id": {"type": "string", "format": "uuid"},
        "mail": {"type": "string", "format": "email", "maxLength": 24}},
        "required": ["code", "short", "day", "at", "when", "id", "mail"]},
    "numbers": {"type": "object", "properties": {
        "i": {"type": "integer", "minimum": -5, "exclusiveMaximum": 5},
        "x": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.5},
        "m": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100}},
        "required": ["i", "x", "m"]},
    "open_object": {"type": "object", "properties": {"fixed": {"type": "integer", "maximum": 3}},
                    "additionalProperties": {"type": "boolean"}, "required": ["fixed"],
                    "maxProperties": 3},
}


@pytest.mark.parametrize("name", sorted(KEYWORDS))
async def test_every_supported_keyword_is_enforced(app, name):
    schema = KEYWORDS[name]
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for seed in range(3):
        data = await chat(app, {**ASK, "seed": seed, "max_tokens": 400,
                                "response_format": schema_format(schema)})
        choice = data["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema, format_checker=checker)


async def test_a_one_of_the_library_cannot_prove_is_refused_only_under_strict(app):
    union = {"type": "object", "properties": {"w": {"oneOf": [
        {"type": "object", "properties": {"k": {"const": 1}}, "required": ["k"]},
        {"type": "object", "properties": {"k": {"const": 2}}, "required": ["k"]}]}}, "required": ["w"]}
    resp = await call(app, "POST", "/chat/completions", {**ASK, "response_format": schema_format(union)},
                      key=None)
    e = json.loads(resp.body)["error"]
    assert resp.status == 422 and e["code"] == "ParameterNotSupported"
    assert e["target"] == "response_format.json_schema.schema.properties.w.oneOf" and "oneOf" in e["message"]
    data = await chat(app, {**ASK, "response_format": schema_format(union, strict=False)})
    jsonschema.validate(json.loads(data["choices"][0]["message"]["content"]), union)


async def test_strict_serves_what_the_openai_sdk_sends(app):
    schema = {"title": "Answer", "description": "what parse() sends", "type": "object",
              "$defs": {"Item": {"title": "Item", "type": "object", "additionalProperties": False,
                                 "properties": {"n": {"title": "N", "type": "integer", "minimum": 0}},
                                 "required": ["n"]}},
              "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"},
                                       "minItems": 1, "maxItems": 2},
                             "tag": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
                             "kind": {"enum": ["a", "b"]}, "one": {"const": 1}},
              "required": ["items", "tag", "kind", "one"], "additionalProperties": False}
    data = await chat(app, {**ASK, "response_format": schema_format(schema, strict=True)})
    jsonschema.validate(json.loads(data["choices"][0]["message"]["content"]), schema)


@pytest.mark.parametrize("schema", [
    {"$ref": "#"}, {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}},
    {"allOf": [{"type": "string"}, {"type": "integer"}]}, {"enum": []}, {"not": {}},
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "(a+)+$"}}},
    {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {}}}},
    {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(300)}},
    {"type": "string", "minLength": 10, "maxLength": 2}, {"type": "object", "required": [1]},
    {"type": "number", "multipleOf": 0}, {"$defs": 5}, {"type": "object", "dependentRequired": {"a": ["b"]}},
], ids=lambda s: json.dumps(s)[:40])
async def test_odd_schemas_answer_200_or_422_never_5xx(app, schema):
    for strict in (True, False):
        resp = await call(app, "POST", "/chat/completions",
                          {**ASK, "max_tokens": 30, "response_format": schema_format(schema, strict)},
                          key=None)
        assert resp.status in (200, 422), resp.body
        if resp.status == 422:
            assert json.loads(resp.body)["error"]["code"] in ("InvalidParameter", "ParameterNotSupported")


async def test_a_json_object_cut_by_max_tokens_is_a_valid_prefix(app):
    from server.grammar import ANY_JSON_OBJECT, compile_schema

    dep = next(iter(app.deployments.values()))
    for seed in range(3):
        data = await chat(app, {**ASK, "seed": seed, "max_tokens": 12,
                                "response_format": {"type": "json_object"}})
        choice = data["choices"][0]
        grammar = compile_schema(dep.grammars, ANY_JSON_OBJECT, False, "x")
        assert grammar.consume(dep.tokenizer.encode(choice["message"]["content"]))
        if choice["finish_reason"] == "length":
            assert not grammar.is_done()


async def test_grammars_compile_in_a_worker_thread_and_are_kept(app, monkeypatch):
    import threading

    from server.grammar import GrammarCompiler

    dep = next(iter(app.deployments.values()))
    threads = []
    compile_ = GrammarCompiler.compile

    def spy(self, grammar):
        threads.append(threading.current_thread())
        return compile_(self, grammar)

    monkeypatch.setattr(GrammarCompiler, "compile", spy)
    body = {**ASK, "max_tokens": 5, "response_format": schema_format({"type": "object", "properties": {
        "fresh": {"type": "integer"}}})}
    await chat(app, body)
    kept = dict(dep.grammars._ready)
    for _ in range(2):
        await chat(app, body)
    assert threading.main_thread() not in threads and len(threads) == 3
    assert dep.grammars._ready == kept  # compiled once, copied for the next requests


async def test_tools_beside_a_json_schema_answer_and_n_choices(app):
    seen = set()
    for seed in range(4):
        data = await chat(app, {**ASK, "seed": seed, "n": 2, "max_tokens": 800, "tools": [WEATHER],
                                "response_format": schema_format(PERSON)})
        for choice in data["choices"]:  # each choice: calls, or an answer in the schema
            message = choice["message"]
            if message["tool_calls"]:
                assert choice["finish_reason"] == "tool_calls"
                _check_calls(message, {"get_weather": SCHEMAS["WEATHER"]})
                seen.add("calls")
            else:
                jsonschema.validate(json.loads(message["content"]), PERSON)
                seen.add("answer")
    data = await chat(app, {**ASK, "n": 3, "max_tokens": 800, "tools": [WEATHER, TIME],
                            "tool_choice": "required"})
    for choice in data["choices"]:
        _check_calls(choice["message"], {"get_weather": SCHEMAS["WEATHER"], "get_time": SCHEMAS["TIME"]})
    assert seen == {"calls", "answer"}, seen  # the random model took both ways
