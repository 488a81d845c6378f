"""The request plumbing under the routes: the metrics-and-limits middleware, the POST /recommend
fast path, body reading, and the one rendering of every error as {"error", "detail"}.

A request passes `ObservabilityMiddleware` (count, latency, the request's log line, body size and
time limits), then `RecommendFastPath` (POST /recommend, when it can take it), then FastAPI, whose
error handlers (`install_error_handlers`) render what the routes raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs
from service.errors import BodyTimeout, PayloadTooLarge, ServiceError
from service.metrics import Metrics
from service.recommend import recommend
from service.schemas import RecommendRequest

log = logging.getLogger(__name__)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
UNION_TAGS = ("int", "float", "str", "bool", "list", "dict", "none", "constrained-str")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def request_id(given: str | None) -> str:
    # os.urandom(16).hex() is uuid4().hex's randomness without building a UUID object
    return given if given is not None and REQUEST_ID.match(given) else os.urandom(16).hex()


def error_response(exc: ServiceError, metrics: Metrics) -> JSONResponse:
    """The one rendering of a domain error: {"error", "detail"} with its status and headers."""
    if 400 <= exc.status < 500:
        metrics.rejected.labels(exc.code).inc()
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


def internal_error_response(method: str, path: str) -> JSONResponse:
    """The one rendering of an unexpected error, logged with its traceback (call it in `except`)."""
    log.exception("unhandled error on %s %s", method, path)
    return JSONResponse({"error": "internal", "detail": "unexpected error; see the service log"}, 500)


def _field(loc: tuple[int | str, ...]) -> str:
    """The field's path, without the type tags pydantic adds for members of a union type."""
    parts = [str(p) for p in loc]
    while len(parts) > 1 and (parts[-1] in UNION_TAGS or parts[-1].startswith(("list[", "dict["))):
        parts.pop()
    return ".".join(parts)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error FastAPI's routes raise, rendered as {"error", "detail"}."""

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


def replay(body: bytes, receive: Receive) -> Receive:
    """Hand a buffered body to the app once, then the connection's own events."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def is_json(content_type: bytes | None) -> bool:
    """application/json or application/*+json, parameters allowed: what FastAPI parses as JSON."""
    if content_type is None:
        return False
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


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


class ObservabilityMiddleware:
    """Pure ASGI: request count and latency by route template, the request's log line
    (`service.logs`), and the request body's limits.

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
        token = logs.start_request()
        status = 500
        rid: str | None = None
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"  # a bounded label

        async def send_wrapper(message: Message) -> None:
            nonlocal status, rid
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        rid = value.decode("latin-1")
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
            elapsed = time.perf_counter() - started
            self.metrics.child(self.metrics.requests, template, method, str(status)).inc()
            self.metrics.child(self.metrics.latency, template, method).observe(elapsed)
            logs.end_request(
                token,
                request_id=rid,
                method=method,
                route=template,
                status=status,
                latency_ms=round(elapsed * 1000, 3),
            )

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


class RecommendFastPath:
    """Pure ASGI: POST /recommend without FastAPI's routing, dependency solving and exception layers.

    It takes a request only when the FastAPI route would read it the same way: a JSON content type
    and a body that `RecommendRequest.model_validate_json` accepts (pydantic's Rust parser, one pass
    from bytes to the model). Anything else (another content type, an empty, malformed or invalid
    body) goes, body replayed, to the FastAPI route, which stays the one renderer of request errors
    and the endpoint's OpenAPI description. Domain errors are rendered by `error_response` and
    unexpected ones by `internal_error_response`, as the app's handlers do. It runs in front of
    FastAPI's middleware stack (`main.MailrecApp`), so those handlers are not on its path.
    """

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self.route = route  # the FastAPI route's: the metrics middleware labels by its path template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/recommend":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first occurrence, as FastAPI's Header() reads
        body = await read_body(receive)
        req = None
        if body and is_json(headers.get(b"content-type")):
            try:
                req = RecommendRequest.model_validate_json(body)
            except ValidationError:
                pass
        if req is None:
            await self.app(scope, replay(body, receive), send)
            return
        scope["route"] = self.route
        state = scope["app"].state.mailrec
        variant, rid = headers.get(b"x-variant"), headers.get(b"x-request-id")
        try:
            out = await recommend(
                state,
                req,
                variant.decode("latin-1") if variant is not None else None,
                request_id(rid.decode("latin-1") if rid is not None else None),
            )
        except ServiceError as exc:
            await error_response(exc, state.metrics)(scope, receive, send)
            return
        except Exception:
            await internal_error_response("POST", "/recommend")(scope, receive, send)
            return
        payload = orjson.dumps(out.body)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.headers.items()]
        raw += [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
