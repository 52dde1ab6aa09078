"""Structured output and tool calls with the real clients against `ember serve` on the default
model: the openai SDK (json_schema, `parse` with a pydantic model, tools, its streaming helper)
and azure-ai-inference (JsonSchemaFormat, tool definitions, tool choices, streaming), each with
a whole tool round trip. Outputs are checked with jsonschema."""

import json

import jsonschema
import pytest
from azure.ai.inference import ChatCompletionsClient
from azure.ai.inference.models import (AssistantMessage, ChatCompletionsNamedToolChoice,
                                       ChatCompletionsNamedToolChoiceFunction,
                                       ChatCompletionsToolCall, ChatCompletionsToolChoicePreset,
                                       ChatCompletionsToolDefinition, CompletionsFinishReason,
                                       FunctionCall, FunctionDefinition, JsonSchemaFormat,
                                       ToolMessage, UserMessage)
from azure.core.credentials import AzureKeyCredential
from pydantic import BaseModel

import openai
from tests.conftest import SMOL_KEY

pytestmark = pytest.mark.model

MODEL = "SmolLM2-135M-Instruct"
EXTRACT = "Extract the person: John Smith is 42 years old and lives in Boston."
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
WEATHER_ARGS = {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"], "additionalProperties": False}
SEARCH_ARGS = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"],
               "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description":
                                           "Get the current weather in a city", "parameters": WEATHER_ARGS}},
         {"type": "function", "function": {"name": "search", "description": "Search the web",
                                           "parameters": SEARCH_ARGS}}]
ARGS = {"get_weather": WEATHER_ARGS, "search": SEARCH_ARGS}
ASK_WEATHER = [{"role": "user", "content": "What's the weather like in Paris today?"}]


class Person(BaseModel):
    name: str
    age: int
    city: str


class GetWeather(BaseModel):
    """Get the current weather in a city"""

    city: str


@pytest.fixture
def oai(smol_server):
    client = openai.OpenAI(base_url=smol_server + "/v1", api_key=SMOL_KEY, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def azure(smol_server):
    client = ChatCompletionsClient(endpoint=smol_server, credential=AzureKeyCredential(SMOL_KEY))
    yield client
    client.close()


def check_calls(calls, names=ARGS):
    assert calls and len({c.id for c in calls}) == len(calls)
    for c in calls:
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), names[c.function.name])


# ---------------------------------------------------------------- openai


def test_openai_json_schema(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": EXTRACT}], temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                "strict": True}})
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, PERSON)
    assert r.choices[0].finish_reason == "stop" and data["age"] == 42


def test_openai_parse_with_a_pydantic_model(oai):
    r = oai.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": EXTRACT}],
                                   temperature=0, response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.city == "Boston"


def test_openai_tool_choices(oai):
    r = oai.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS,
                                    tool_choice="required", temperature=0)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    check_calls(r.choices[0].message.tool_calls)
    named = {"type": "function", "function": {"name": "search"}}
    r = oai.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice=named,
                                    parallel_tool_calls=False, temperature=0.7, seed=3)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "search"
    check_calls(calls)
    r = oai.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, temperature=0)
    message = r.choices[0].message
    if message.tool_calls:  # auto: the model chooses
        check_calls(message.tool_calls)
        assert r.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content and r.choices[0].finish_reason in ("stop", "length")


def test_openai_streamed_tool_calls_with_the_sdk_helper(oai):
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    kwargs = dict(model=MODEL, messages=ASK_WEATHER, tools=[tool], tool_choice="required",
                  temperature=0)
    whole = oai.chat.completions.create(**kwargs).choices[0].message.tool_calls
    with oai.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole]
    assert isinstance(calls[0].function.parsed_arguments, GetWeather)


def test_openai_tool_round_trip(oai):
    r = oai.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS,
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                    temperature=0)
    call = r.choices[0].message.tool_calls[0]
    messages = ASK_WEATHER + [r.choices[0].message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id,
                               "content": json.dumps({"temperature_c": 22, "sky": "sunny"})}]
    final = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0,
                                        max_tokens=60)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    assert final.usage.prompt_tokens > r.usage.prompt_tokens + r.usage.completion_tokens


# ---------------------------------------------------------------- azure-ai-inference


AZURE_TOOLS = [ChatCompletionsToolDefinition(function=FunctionDefinition(
    name=t["function"]["name"], description=t["function"]["description"],
    parameters=t["function"]["parameters"])) for t in TOOLS]


def test_azure_json_schema(azure):
    r = azure.complete(messages=[UserMessage(EXTRACT)], temperature=0, response_format=JsonSchemaFormat(
        name="person", schema=PERSON, description="A person", strict=True))
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_azure_tool_choices_and_streaming(azure):
    r = azure.complete(messages=[UserMessage("What's the weather like in Paris today?")],
                       tools=AZURE_TOOLS, tool_choice=ChatCompletionsToolChoicePreset.REQUIRED,
                       temperature=0)
    assert r.choices[0].finish_reason == CompletionsFinishReason.TOOL_CALLS
    check_calls(r.choices[0].message.tool_calls)
    named = ChatCompletionsNamedToolChoice(function=ChatCompletionsNamedToolChoiceFunction(name="search"))
    kwargs = dict(messages=[UserMessage("Find news about NASA.")], tools=AZURE_TOOLS,
                  tool_choice=named, temperature=0, model_extras={"parallel_tool_calls": False})
    whole = azure.complete(**kwargs).choices[0].message.tool_calls
    assert len(whole) == 1 and whole[0].function.name == "search"
    calls, finish = [], None
    for update in azure.complete(stream=True, **kwargs):
        if not update.choices:
            continue
        for tc in update.choices[0].delta.tool_calls or []:
            if tc.id:
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": ""})
            calls[-1]["arguments"] += tc.function.arguments or ""
        finish = update.choices[0].finish_reason or finish
    assert finish == CompletionsFinishReason.TOOL_CALLS
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole]


def test_azure_tool_round_trip(azure):
    question = UserMessage("What's the weather like in Paris today?")
    r = azure.complete(messages=[question], tools=AZURE_TOOLS, temperature=0, tool_choice=
                       ChatCompletionsNamedToolChoice(function=ChatCompletionsNamedToolChoiceFunction(
                           name="get_weather")))
    call = r.choices[0].message.tool_calls[0]
    history = [question,
               AssistantMessage(tool_calls=[ChatCompletionsToolCall(id=call.id, function=FunctionCall(
                   name=call.function.name, arguments=call.function.arguments))]),
               ToolMessage(content='{"temperature_c": 22, "sky": "sunny"}', tool_call_id=call.id)]
    final = azure.complete(messages=history, tools=AZURE_TOOLS, temperature=0, max_tokens=60)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
