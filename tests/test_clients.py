"""The real clients against `ember serve` on the default model: azure-ai-inference and openai,
unchanged, over a loopback socket."""

import http.client
import json
import threading
import time

import pytest
from azure.ai.inference import ChatCompletionsClient, load_client
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

import openai
from tests.conftest import SMOL_KEY as KEY

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"


@pytest.fixture
def server(smol_server):
    return smol_server


@pytest.fixture(params=["", "/models"])
def azure(server, request):
    client = ChatCompletionsClient(endpoint=server + request.param, credential=AzureKeyCredential(KEY))
    yield client
    client.close()


@pytest.fixture
def oai(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    yield client
    client.close()


def test_azure_complete(azure):
    r = azure.complete(messages=[SystemMessage("You are a helpful assistant."), UserMessage(QUESTION)],
                       temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0
    assert r.model == "SmolLM2-135M-Instruct" and r.id.startswith("chatcmpl-")


def test_azure_streaming_matches_non_streaming(azure):
    kwargs = dict(messages=[UserMessage("Write one sentence about the sea.")], temperature=0.7,
                  seed=1, max_tokens=40)
    whole = azure.complete(**kwargs).choices[0].message.content
    pieces, finish, usage = [], None, None
    for update in azure.complete(stream=True, **kwargs):
        if update.choices:
            pieces.append(update.choices[0].delta.content or "")
            finish = update.choices[0].finish_reason or finish
        usage = update.usage or usage
    assert "".join(pieces) == whole and finish in ("stop", "length") and usage.completion_tokens > 0


def test_azure_model_info_load_client_and_errors(azure, server):
    info = azure.get_model_info()
    assert info.model_name == "SmolLM2-135M-Instruct" and info.model_type == "chat-completion"
    client = load_client(endpoint=server, credential=AzureKeyCredential(KEY))
    assert isinstance(client, ChatCompletionsClient)
    client.close()
    with pytest.raises(HttpResponseError) as e:
        azure.complete(messages=[UserMessage("hi")], temperature=3.0)
    assert e.value.status_code == 422 and e.value.error.code == "InvalidParameter"
    assert e.value.error.target == "temperature"
    bad = ChatCompletionsClient(endpoint=server, credential=AzureKeyCredential("wrong"))
    with pytest.raises(HttpResponseError) as e:
        bad.complete(messages=[UserMessage("hi")])
    assert e.value.status_code == 401
    bad.close()


def test_openai_chat(oai):
    r = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                    temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content and r.usage.prompt_tokens > 0
    assert r.system_fingerprint.startswith("fp_")


def test_openai_streaming_with_usage(oai):
    stream = oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert "Paris" in text


def test_openai_completions(oai):
    r = oai.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8,
                               temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 8


def test_openai_errors_carry_code_and_param(oai):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], top_p=1.5)
    assert e.value.code == "InvalidParameter" and e.value.param == "top_p"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                    extra_body={"top_k": 5})
    assert e.value.code == "ExtraParametersNotAllowed" and e.value.param == "top_k"
    assert e.value.request_id and e.value.request_id.startswith("chatcmpl-")


def test_health_stays_fast_during_a_long_generation(server):
    host, port = server.removeprefix("http://").split(":")
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": 200, "temperature": 0.8, "ignore_eos": True}).encode()

    def generate():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/chat/completions", body, {"api-key": KEY, "extra-parameters": "pass-through"})
        assert conn.getresponse().status == 200
        conn.close()

    t = threading.Thread(target=generate)
    t.start()
    time.sleep(0.5)
    times = []
    for _ in range(20):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        start = time.perf_counter()
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        times.append(time.perf_counter() - start)
        conn.close()
        time.sleep(0.05)
    t.join()
    assert max(times) < 0.05, times
