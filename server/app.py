"""The application: dispatch, auth, api-version, extra-parameters, error envelope, request ids,
access log and metrics around the route handlers; and `serve`, which runs it all.

Owns: `App`, `serve`, `load_deployment`. Imports: anyio, server.*, engine, tokenizer.
Used by: server.__main__, tests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from engine import Engine, EngineConfig
from server.config import ServerConfig
from server.deployment import Deployment
from server.engine_client import EngineClient
from server.http import HttpLimits, HttpRequest, HttpResponse, HttpServer
from server.metrics import Metrics
from server.models import open_model
from server.protocol import EXTRA_POLICIES, ApiError, encode
from server.routes import ROUTES, Call
from tokenizer import ChatTemplate

logger = logging.getLogger("ember.server")
access_log = logging.getLogger("ember.access")

API_VERSIONS = ("2024-04-01-preview", "2024-05-01-preview", "2024-08-01-preview", "2025-04-01",
                "2025-05-01", "2025-05-15-preview")
ENGINE_VERSION = "ember-0.1.0"
_ID_PREFIX = {"/chat/completions": "chatcmpl", "/completions": "cmpl"}


class App:
    """Turns an `HttpRequest` into an `HttpResponse`; never raises."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.deployments: dict[str, Deployment] = {}
        self.ready = False
        self.draining = False

    def add(self, dep: Deployment) -> None:
        self.deployments[dep.name.lower()] = dep
        c, m = dep.client, self.metrics
        m.running.labels(dep.name).set_function(lambda: c.stats.running)
        m.waiting.labels(dep.name).set_function(lambda: c.queue_depth)
        m.kv_usage.labels(dep.name).set_function(
            lambda: c.stats.kv_blocks_used / max(c.stats.kv_blocks_total, 1))
        m.kv_cached.labels(dep.name).set_function(lambda: c.stats.kv_blocks_cached)

        seen = [c.stats]

        def observe(seconds: float, n_tokens: int) -> None:
            m.step_time.observe(seconds)
            m.batch_tokens.observe(n_tokens)
            now, before = c.stats, seen[0]  # the engine's totals, as counters
            m.drafted.inc(now.tokens_drafted - before.tokens_drafted)
            m.accepted.inc(now.tokens_accepted - before.tokens_accepted)
            m.preemptions.inc(now.preemptions - before.preemptions)
            seen[0] = now

        c.on_step(observe)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        route = _route_name(request.path)
        call = Call(request, f"{_ID_PREFIX.get(route, 'req')}-{uuid.uuid4().hex}", self.deployments,
                    self.metrics)
        try:
            response = await self._dispatch(call)
        except ApiError as e:
            response = error_response(e)
        except Exception:
            logger.exception("request %s failed", call.request_id)
            response = error_response(ApiError(500, "InternalServerError",
                                               f"request {call.request_id} failed; see the server log"))
        response.headers.append(("x-request-id", call.request_id))
        if "x-ms-client-request-id" in request.headers:
            response.headers.append(("x-ms-client-request-id", request.headers["x-ms-client-request-id"]))
        if response.stream is not None:
            response.stream = self._logged_stream(call, route, response.stream)
        else:
            self._log(call, route, response.status)
        return response

    async def _dispatch(self, call: Call) -> HttpResponse:
        request = call.request
        if request.path == "/health":  # never needs a key
            return self._health()
        method, handler = ROUTES.get(request.path, (None, None))
        if handler is None:
            raise ApiError(404, "NotFound", f"no route {request.path}")
        if request.method != method:
            raise ApiError(405, "MethodNotAllowed", f"{request.path} takes {method}",
                           headers=(("allow", method),))
        self._authorize(request)
        version = request.query.get("api-version")
        if version is not None and version not in API_VERSIONS:
            raise ApiError(400, "UnsupportedApiVersion", f"api-version {version!r} is not "
                           f"supported; use one of: {', '.join(API_VERSIONS)}", "api-version")
        call.policy = request.headers.get("extra-parameters", "error").strip().lower()
        if call.policy not in EXTRA_POLICIES:
            raise ApiError(400, "InvalidHeader", f"extra-parameters must be one of "
                           f"{', '.join(EXTRA_POLICIES)}, got {call.policy!r}", "extra-parameters")
        if request.path != "/metrics" and (not self.ready or self.draining):
            raise _unavailable(self.draining)
        return await handler(call)

    def _health(self) -> HttpResponse:
        if not self.ready or self.draining:
            return error_response(_unavailable(self.draining))
        return HttpResponse(200, [("content-type", "application/json")], b'{"status":"ok"}')

    def _authorize(self, request: HttpRequest) -> None:
        if not self.config.api_keys:
            return
        bearer = request.headers.get("authorization", "")
        given = [request.headers.get("api-key", ""), bearer[7:] if bearer[:7].lower() == "bearer " else ""]
        # compare_digest is constant-time; evaluate every pair so timing says nothing either
        ok = [hmac.compare_digest(g.strip().encode(), k.encode()) for g in given if g for k in self.config.api_keys]
        if not any(ok):
            raise ApiError(401, "Unauthorized", "a valid API key is needed: send it as `api-key: "
                           "KEY` or `Authorization: Bearer KEY`")

    async def _logged_stream(self, call: Call, route: str,
                             stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in stream:
                yield chunk
        except BaseException:
            status = 499  # the client went away mid-stream (nginx's convention for the log)
            raise
        finally:
            await stream.aclose()
            self._log(call, route, status)

    def _log(self, call: Call, route: str, status: int) -> None:
        duration = time.perf_counter() - call.started
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.duration.observe(duration)
        ttft = "-" if call.ttft is None else f"{call.ttft * 1000:.0f}ms"
        access_log.info("%s %s %s %d prompt=%d completion=%d ttft=%s duration=%.0fms",
                        call.request_id, call.request.method, call.request.path, status,
                        call.prompt_tokens, call.completion_tokens, ttft, duration * 1000)


def _route_name(path: str) -> str:
    for prefix in ("/models", "/v1"):
        if path.startswith(prefix + "/") and path != "/v1/models":
            return path[len(prefix):]
    return path


def _unavailable(draining: bool) -> ApiError:
    return ApiError(503, "ServiceUnavailable",
                    "the server is shutting down" if draining else "the model is still loading",
                    headers=(("retry-after", "1"),))


def error_response(e: ApiError) -> HttpResponse:
    headers = [("content-type", "application/json"), ("x-ms-error-code", e.code), *e.headers]
    return HttpResponse(e.status, headers, encode(e.body()))


def transport_error(status: int, message: str) -> HttpResponse:
    codes = {408: "RequestTimeout", 413: "PayloadTooLarge", 431: "HeadersTooLarge",
             400: "BadRequest", 500: "InternalServerError"}
    return error_response(ApiError(status, codes.get(status, "BadRequest"), message))


# ---------------------------------------------------------------- loading and serving


def fingerprint(path: Path) -> str:
    """Changes exactly when something that can change outputs changes: the weight files (and so
    their format) and the engine version."""
    digest = hashlib.sha256(ENGINE_VERSION.encode())
    files = sorted(path.glob("*.safetensors")) + [path / "config.json"] if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return "fp_" + digest.hexdigest()[:12]


def load_deployment(name: str, path: Path, config: ServerConfig) -> Deployment:
    """Load weights and tokenizer, compile the kernels; runs in a worker thread at start-up."""
    cfg, weights, tok = open_model(path, config.weights)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=config.max_seqs, max_seq_len=config.context,
                                               max_batch_tokens=config.max_batch_tokens,
                                               kv_cache_mb=config.kv_cache_mb,
                                               max_draft=config.max_draft))
    start = time.perf_counter()
    logger.info("%s: compiling kernels (a minute on the first start; cached on disk after)", name)
    engine.warmup()
    logger.info("%s: kernels ready in %.1f s", name, time.perf_counter() - start)
    dep = Deployment(name, EngineClient(engine, config.max_queue), tok,
                     ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token),
                     fingerprint(path), engine.max_seq_len)
    logger.info("%s: tool calls in the %s syntax%s", name, dep.tool_syntax.name,
                "" if dep.tools_native else " (the template has none of its own)")
    return dep


async def serve(config: ServerConfig, loaders: dict[str, Callable[[], Deployment]],
                app: App | None = None, stop: anyio.Event | None = None, *,
                task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """Listen, load the models (/health is 503 until they are ready), serve until SIGTERM or
    SIGINT (or `stop`), then drain for up to `config.grace` seconds. `task_status.started`
    receives the port (useful with port 0)."""
    app = app or App(config)
    stop = stop or anyio.Event()
    limits = HttpLimits(config.max_body, config.max_header, config.read_timeout, config.idle_timeout)
    server = HttpServer(app.handle, transport_error, limits)
    listener = await anyio.create_tcp_listener(local_host=config.host, local_port=config.port)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    logger.info("listening on http://%s:%d", config.host, port)
    if not config.api_keys:
        logger.warning("no API key configured: requests are not authenticated")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, stop)
        tg.start_soon(_load_all, app, loaders, tg)
        task_status.started(port)
        await server.serve(listener, stop, config.grace)
        app.draining = True
        tg.cancel_scope.cancel()
    logger.info("stopped")


async def _load_all(app: App, loaders: dict[str, Callable[[], Deployment]], tg) -> None:
    for load in loaders.values():  # in a worker thread: /health keeps answering meanwhile
        dep = await anyio.to_thread.run_sync(load)
        app.add(dep)
        tg.start_soon(dep.client.run)
    app.ready = True
    logger.info("ready: %s", ", ".join(loaders))


async def _watch_signals(stop: anyio.Event) -> None:
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("%s: stopping (in-flight requests get a grace period)",
                            signal.Signals(signum).name)
                stop.set()
                return
    except (NotImplementedError, ValueError, RuntimeError):  # not the main thread (tests)
        await anyio.sleep_forever()
