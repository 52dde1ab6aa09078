"""Transport: an anyio TCP listener speaking HTTP/1.1 through h11. Knows nothing about LLMs.

Owns: `HttpRequest`, `HttpResponse`, `HttpLimits`, `HttpServer`. Imports: anyio, h11, stdlib.
Used by: server.app (gives it a handler), tests.

Per connection: keep-alive with pipelined requests answered in order (h11 buffers what arrives
early), Content-Length and chunked request bodies, a body limit (413) and a header limit (431),
a read timeout for a request's head and body and an idle timeout between requests. A response
with a `stream` is sent chunked, one chunk per item, each written at once (SSE needs that).
While a request is handled and answered, a watcher reads the socket: a client that goes away
cancels the handler, whose cleanup (closing its stream) aborts the engine work behind it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import h11

logger = logging.getLogger(__name__)


@dataclass
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    client: str = ""


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None  # sent chunked, one chunk per item


@dataclass(frozen=True)
class HttpLimits:
    max_body: int = 8 * 1024 * 1024
    max_header: int = 64 * 1024
    read_timeout: float = 30.0  # for a request's head and body once it has started
    idle_timeout: float = 15.0  # between requests on a kept-alive connection


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
ErrorResponder = Callable[[int, str], HttpResponse]


class _ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Disconnected(Exception):
    pass


_GONE = (_Disconnected, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)


class HttpServer:
    """Serves `handler` on every connection; `on_error(status, message)` shapes transport errors."""

    def __init__(self, handler: Handler, on_error: ErrorResponder, limits: HttpLimits = HttpLimits()):
        self.handler = handler
        self.on_error = on_error
        self.limits = limits
        self.draining = False
        self._idle: set[anyio.CancelScope] = set()

    async def serve(self, listener: anyio.abc.Listener, stop: anyio.Event, grace: float) -> None:
        """Accept connections until `stop` is set, then let requests in flight finish for up to
        `grace` seconds and close everything."""
        async with anyio.create_task_group() as conns:
            async with anyio.create_task_group() as accept:
                async def accept_loop(one: anyio.abc.Listener) -> None:
                    while True:
                        stream = await one.accept()
                        conns.start_soon(self.serve_connection, stream)

                for one in getattr(listener, "listeners", [listener]):
                    accept.start_soon(accept_loop, one)
                await stop.wait()
                accept.cancel_scope.cancel()
            await listener.aclose()
            self.draining = True
            for scope in list(self._idle):
                scope.cancel()
            conns.cancel_scope.deadline = anyio.current_time() + grace

    async def serve_connection(self, stream: anyio.abc.ByteStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header)
        try:
            first = True
            while not self.draining or first:
                request = await self._read_request(conn, stream, first)
                if request is None:
                    return
                first = False
                if not await self._respond(conn, stream, request):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except _ClientError as e:
            await self._send_error(conn, stream, e.status, str(e))
        except _GONE:
            pass
        except Exception:  # one connection must never take the server down
            logger.exception("connection failed")
        finally:
            await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: anyio.abc.ByteStream,
                            first: bool) -> HttpRequest | None:
        """The next whole request, or None when the client closed or went idle too long."""
        scope = anyio.CancelScope(deadline=anyio.current_time() + (
            self.limits.read_timeout if first else self.limits.idle_timeout))
        self._idle.add(scope)
        try:
            with scope:
                head = await self._next_event(conn, stream)
        finally:
            self._idle.discard(scope)
        if scope.cancelled_caught or isinstance(head, h11.ConnectionClosed):
            return None
        assert isinstance(head, h11.Request), head
        # h11 enforces the limit only on a head still incomplete in its buffer; one that
        # arrived whole in a single read is measured here.
        if len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers) > self.limits.max_header:
            raise _ClientError(431, "request headers are over the limit")
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, val = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body:
            raise _ClientError(413, f"request body of {length} bytes is over the limit of "
                                    f"{self.limits.max_body} bytes")
        with anyio.move_on_after(self.limits.read_timeout) as body_scope:
            body = await self._read_body(conn, stream)
        if body_scope.cancelled_caught:
            raise _ClientError(408, "timed out reading the request body")
        url = urlsplit(head.target.decode("latin-1"))
        return HttpRequest(head.method.decode("ascii"), url.path or "/",
                           dict(parse_qsl(url.query, keep_blank_values=True)), headers, body)

    async def _read_body(self, conn: h11.Connection, stream: anyio.abc.ByteStream) -> bytes:
        parts, size = [], 0
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if isinstance(event, h11.ConnectionClosed):
                raise _Disconnected
            size += len(event.data)
            if size > self.limits.max_body:
                raise _ClientError(413, f"request body is over the limit of {self.limits.max_body} bytes")
            parts.append(event.data)

    async def _next_event(self, conn: h11.Connection, stream: anyio.abc.ByteStream):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                raise _ClientError(status, "request headers are over the limit" if status == 431
                                   else f"malformed HTTP request: {e}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, *_GONE):
                data = b""
            conn.receive_data(data)

    async def _respond(self, conn: h11.Connection, stream: anyio.abc.ByteStream,
                       request: HttpRequest) -> bool:
        """Handle and answer one request while watching for the client going away; False if
        it went away (the connection is then done)."""
        gone = False
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                nonlocal gone
                while len(conn.trailing_data[0]) <= self.limits.max_header + self.limits.max_body:
                    try:
                        data = await stream.receive(65536)
                    except (anyio.EndOfStream, *_GONE):
                        gone = True
                        tg.cancel_scope.cancel()
                        return
                    conn.receive_data(data)  # a pipelined request: h11 keeps it for later
                await anyio.sleep_forever()

            tg.start_soon(watch)
            try:
                response = await self.handler(request)
            except Exception:  # the handler should never raise; never take the connection down
                logger.exception("handler failed on %s %s", request.method, request.path)
                response = self.on_error(500, "internal error")
            if self.draining:
                response.headers.append(("connection", "close"))
            try:
                await self._send(conn, stream, response)
            except _GONE:  # the client went away while we were writing
                gone = True
            tg.cancel_scope.cancel()
        return not gone

    async def _send(self, conn: h11.Connection, stream: anyio.abc.ByteStream,
                    response: HttpResponse) -> None:
        headers = list(response.headers)
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        reason = HTTPStatus(response.status).phrase.encode() if response.status in HTTPStatus._value2member_map_ else b""
        await stream.send(conn.send(h11.Response(status_code=response.status, headers=headers,
                                                 reason=reason)))
        if response.stream is None:
            if response.body:
                await stream.send(conn.send(h11.Data(data=response.body)))
        else:
            async with aclosing(response.stream) as chunks:
                async for chunk in chunks:
                    await stream.send(conn.send(h11.Data(data=chunk)))
        await stream.send(conn.send(h11.EndOfMessage()))

    async def _send_error(self, conn: h11.Connection, stream: anyio.abc.ByteStream, status: int,
                          message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = self.on_error(status, message)
        response.headers.append(("connection", "close"))
        try:
            await self._send(conn, stream, response)
        except (h11.LocalProtocolError, *_GONE):
            pass
