"""The transport over real loopback sockets: keep-alive, pipelining, chunked bodies, limits,
timeouts, SSE flushing, disconnects, and every status of API.md's error table in raw HTTP."""

import json
import re
import socket
import threading
import time

import anyio
import anyio.abc
import pytest

from server.config import ServerConfig
from server.http import HttpResponse, HttpServer
from tests.conftest import run_server, tiny_deployment

KEY = "secret"
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode()


def raw(port, data: bytes, timeout=10.0) -> bytes:
    """Send bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def post(path, body=CHAT, extra=b"", close=True):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\napi-key: {KEY}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n").encode()
    return head + extra + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_keep_alive_and_pipelining_answer_in_order(tiny_server):
    requests = (post("/v1/chat/completions", close=False) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                + post("/nope"))
    out = raw(tiny_server, requests)
    statuses = [int(code) for code in re.findall(rb"HTTP/1.1 (\d{3}) ", out)]
    assert statuses == [200, 200, 404]


def test_chunked_request_body(tiny_server):
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(CHAT[i:i + 7]), CHAT[i:i + 7]) for i in range(0, len(CHAT), 7))
    head = (f"POST /chat/completions HTTP/1.1\r\nHost: x\r\napi-key: {KEY}\r\n"
            "transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode()
    out = raw(tiny_server, head + chunks + b"0\r\n\r\n")
    assert status_of(out) == 200 and body_of(out)["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("make,status,code", [
    (lambda: post("/chat/completions", b"{oops"), 400, "InvalidJson"),
    (lambda: post("/chat/completions").replace(f"api-key: {KEY}".encode(), b"api-key: no"), 401,
     "Unauthorized"),
    (lambda: post("/nope"), 404, "NotFound"),
    (lambda: post("/chat/completions", extra=b"azureml-model-deployment: ghost\r\n"), 404,
     "DeploymentNotFound"),
    (lambda: b"PUT /chat/completions HTTP/1.1\r\nHost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
     405, "MethodNotAllowed"),
    (lambda: post("/chat/completions", b"{" + b" " * 5000 + b"}"), 413, "PayloadTooLarge"),
    (lambda: post("/chat/completions", extra=b"x-big: " + b"a" * 3000 + b"\r\n"), 431, "HeadersTooLarge"),
    (lambda: post("/chat/completions", json.dumps({"messages": [], "max_tokens": 1}).encode()), 422,
     "InvalidParameter"),
    (lambda: post("/chat/completions", extra=b"azureml-model-deployment: broken\r\n"), 500,
     "InternalServerError"),
    (lambda: post("/chat/completions", extra=b"azureml-model-deployment: full\r\n"), 429,
     "TooManyRequests"),
])
def test_error_statuses_in_raw_http(tiny_server, make, status, code):
    out = raw(tiny_server, make())
    assert status_of(out) == status
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert f"x-ms-error-code: {code}".lower().encode() in head
    assert b"content-type: application/json" in head
    error = body_of(out)["error"]
    assert error["code"] == code and error["message"]
    assert (b"retry-after: 1" in head) == (status == 429)  # only 429 and 503 carry it


def test_503_while_loading():
    gate = threading.Event()

    def slow():
        gate.wait(30)
        return tiny_deployment()

    config = ServerConfig(port=0, grace=2.0)
    with run_server(config, {"tiny": slow}, wait_ready=False) as port:
        out = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
        assert status_of(out) == 503 and b"retry-after: 1" in out.lower()
        out = raw(port, post("/chat/completions").replace(f"api-key: {KEY}\r\n".encode(), b""))
        assert status_of(out) == 503 and body_of(out)["error"]["code"] == "ServiceUnavailable"
        gate.set()


def test_sse_events_are_flushed_one_by_one(tiny_server):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", tiny_server), timeout=10) as s:
        s.sendall(post("/chat/completions", body))
        data, arrivals = b"", []
        while chunk := s.recv(65536):
            data += chunk
            arrivals.append(time.perf_counter())
    head, rest = data.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower() and b"text/event-stream" in head
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert len(arrivals) > 5  # events arrive as they are made, not in one buffer at the end


def test_read_timeout_and_idle_timeout_close(tiny_server):
    start = time.perf_counter()
    out = raw(tiny_server, b"POST /chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{")
    assert status_of(out) == 408 and time.perf_counter() - start < 5
    with socket.create_connection(("127.0.0.1", tiny_server), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.perf_counter()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert status_of(got) == 200 and 0.5 < time.perf_counter() - start < 5  # idle: 1 s


def test_client_going_away_mid_stream_frees_its_slot():
    deps = {}

    def load():
        deps["d"] = tiny_deployment(max_seqs=2, context=4096)
        return deps["d"]

    with run_server(ServerConfig(port=0, grace=2.0), {"tiny": load}) as port:
        engine = deps["d"].client.engine
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000,
                           "stream": True}).encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(post("/chat/completions", body).replace(f"api-key: {KEY}\r\n".encode(), b""))
        got = s.recv(65536)
        while got.count(b"data: ") < 3:  # the role delta, then tokens: it is in the engine
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200") and engine.cache.n_referenced > 0
        s.close()
        for _ in range(200):
            if engine.cache.n_referenced == 0 and not engine.has_unfinished:
                break
            time.sleep(0.02)
        assert engine.cache.n_referenced == 0 and not engine.has_unfinished


def test_engine_error_after_headers_is_an_error_event(tiny_server):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    out = raw(tiny_server, post("/chat/completions", body, b"azureml-model-deployment: broken\r\n"))
    assert status_of(out) == 200
    events = [line for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert events[0].startswith(b'data: {"id"')  # the role delta went out before the fault
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "InternalServerError" and "chatcmpl-" in error["message"]
    assert events[-1] == b"data: [DONE]"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_abandoned_requests_leave_no_trace():
    """200 streaming requests, every other one abandoned mid-stream: afterwards nothing runs or
    waits, no block is held, no stream is left behind, and memory has not grown."""
    deps = {}

    def load():
        deps["d"] = tiny_deployment(max_seqs=4, context=1024)
        return deps["d"]

    def one(port, i):
        body = json.dumps({"messages": [{"role": "user", "content": f"request {i} " * (i % 7 + 1)}],
                           "max_tokens": 40, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(post("/chat/completions", body).replace(f"api-key: {KEY}\r\n".encode(), b""))
            got = b""
            while chunk := s.recv(65536):
                got += chunk
                if i % 2 and got.count(b"data: ") >= 3:
                    return  # hang up mid-stream
        assert got.rstrip(b"\r\n0").endswith(b"data: [DONE]")

    def batch(port, ids):
        threads = [threading.Thread(target=one, args=(port, i)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    with run_server(ServerConfig(port=0, grace=2.0), {"tiny": load}) as port:
        client = deps["d"].client
        for start in range(0, 40, 8):
            batch(port, range(start, start + 8))
        baseline = _rss_mb()
        deadline = time.perf_counter() + 120
        for start in range(40, 200, 8):
            assert time.perf_counter() < deadline
            batch(port, range(start, start + 8))
        for _ in range(200):
            engine = client.engine
            if not engine.has_unfinished and engine.cache.n_referenced == 0:
                break
            time.sleep(0.02)
        assert not engine.has_unfinished and engine.cache.n_referenced == 0
        assert client.queue_depth == 0 and not client._streams  # noqa: SLF001
        assert engine.cache.n_cached <= engine.cache.n_blocks
        assert _rss_mb() - baseline < 30, (baseline, _rss_mb())


class _BreaksWhileWriting(anyio.abc.ByteStream):
    """A client that sends one request, then vanishes while the response is being written."""

    def __init__(self, request: bytes):
        self.request, self.sent = request, 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.request:
            data, self.request = self.request, b""
            return data
        await anyio.sleep_forever()

    async def send(self, item: bytes) -> None:
        self.sent += 1
        if self.sent > 2:
            raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_client_vanishing_mid_write_only_ends_its_connection():
    """A write that fails (reset by the peer) ends that connection quietly: no exception may
    escape, since it would cancel every other connection and the engine with it."""
    closed = anyio.Event()

    async def events():
        try:
            for i in range(100):
                yield b"data: %d\n\n" % i
        finally:
            closed.set()

    async def handler(request):
        return HttpResponse(200, [("content-type", "text/event-stream")], stream=events())

    server = HttpServer(handler, lambda status, msg: HttpResponse(status))
    await server.serve_connection(_BreaksWhileWriting(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert closed.is_set()  # the stream was closed, so its engine request gets aborted
