"""HTTP routes: they wire the steps in `service.recommend` and render results; no computing.

POST /recommend is served by `RecommendFastPath` (pure ASGI) whenever the FastAPI route would
serve it the same way; the FastAPI route below stays for everything else and for the API docs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import NotReady, ServiceError, Unauthorized, UnknownVariant
from service.metrics import CONTENT_TYPE, Metrics
from service.recommend import feedback, recommend
from service.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
)
from service.state import StateDep

router = APIRouter()
log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
ERRORS = {  # the `error` codes each status carries (service.errors), for the OpenAPI description
    400: "`bad_request` (a body that is not JSON), `unknown_variant` (an X-Variant not allow-listed)",
    401: "`unauthorized`: admin endpoints need the bearer token",
    404: "`unknown_request`: no such impression, or past the attribution window",
    408: "`body_timeout`: the body took over MAILREC_BODY_TIMEOUT_S to arrive (connection closed)",
    413: "`payload_too_large`: a body over MAILREC_MAX_BODY_BYTES",
    422: "`validation` (each field named), `invalid_input`, `item_not_served`, `bad_bundle`",
    503: "`not_ready` (bundles loading), `feedback_store_down` (Redis unreachable: retry)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: each the one error shape."""
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


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


@router.post("/recommend", response_model=RecommendResponse, responses=errors(400, 408, 413, 422, 503))
async def post_recommend(
    req: RecommendRequest,
    state: StateDep,
    x_variant: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Rank items for a user; cold users get MAIL's virtual behavior (variant permitting)."""
    if not state.ready:
        raise NotReady("bundles are still loading")
    out = await recommend(state, req, x_variant, request_id(x_request_id))
    return json_response(out.body, headers=out.headers)


@router.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackResponse,
    responses=errors(400, 404, 408, 413, 422, 503),
)
async def post_feedback(
    req: FeedbackRequest, state: StateDep, x_request_id: Annotated[str | None, Header()] = None
) -> Response:
    """Record a click on an item of an earlier response (its `impression_id`); counted once,
    credited to the variant that served it."""
    body = await feedback(state, req)
    return json_response(body, 202, {"X-Request-Id": request_id(x_request_id)})


@router.get("/livez")
async def livez() -> dict[str, str]:
    """Liveness: the process answers. No dependency checks."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready: bundles still loading."}},
)
async def readyz(state: StateDep) -> Response:
    """Readiness: every variant's bundle loaded and warmed. Redis is reported, not required."""
    redis_ok = await state.store.ping()
    body = {
        "status": "ready" if state.ready else "loading",
        "variants": {
            m.variant: {"model_version": m.version, "provider": m.towers.provider}
            for m in state.registry.all()
        },
        "redis": "up" if redis_ok else "down",
        "redis_embedded": state.embedded is not None,
    }
    return json_response(body, 200 if state.ready else 503)


@router.get("/models")
async def models(state: StateDep) -> dict[str, Any]:
    """The experiment and the model each variant serves, with the provider it really runs on."""
    exp = state.experiment
    return {
        "experiment": {
            "name": exp.name,
            "salt": exp.salt,
            "variants": [
                {"name": v.name, "weight": v.weight, "bundle": str(v.bundle), "kind": v.kind}
                for v in exp.variants
            ],
            "override_allowed": sorted(exp.overridable),
        },
        "models": [m.describe() for m in state.registry.all()],
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    state.metrics.tasks.set(len(asyncio.all_tasks()))
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def check_admin(state: StateDep, authorization: str | None) -> None:
    token = state.settings.admin_token
    if token is None:
        raise Unauthorized("admin endpoints are disabled: set MAILREC_ADMIN_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token")


@router.post("/admin/reload", responses=errors(400, 401, 408, 413, 422))
async def reload(
    req: ReloadRequest, state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Load, validate and warm a bundle for a variant, then swap it in; a bad bundle is refused."""
    check_admin(state, authorization)
    names = state.experiment.names
    if req.variant not in names:
        raise UnknownVariant(req.variant, names)
    served = next(v for v in state.experiment.variants if v.name == req.variant)
    path = Path(req.bundle) if req.bundle else served.bundle
    try:
        new, old = await state.registry.reload(req.variant, path, served.kind)
    except Exception:
        state.metrics.reloads.labels(req.variant, "failure").inc()
        raise
    state.metrics.reloads.labels(req.variant, "success").inc()
    man = new.bundle.manifest
    state.metrics.set_model(req.variant, new.model_name, new.version, man.ranker, new.towers.provider)
    return {
        "variant": req.variant,
        "model_version": new.version,
        "previous_version": old.version if old else None,
        "model": new.describe(),
    }


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

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the FastAPI route's object: the metrics middleware labels requests by its path template
        self.route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/recommend")

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
            if not state.ready:
                raise NotReady("bundles are still loading")
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
