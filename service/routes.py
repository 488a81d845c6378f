"""HTTP routes: they wire the steps in `service.recommend` and render results; no computing.

POST /recommend is served by `plumbing.RecommendFastPath` (pure ASGI) whenever the FastAPI route
would serve it the same way; the FastAPI route below stays for everything else and for the API docs.
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized, UnknownVariant
from service.metrics import CONTENT_TYPE
from service.plumbing import json_response, request_id
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
ERRORS = {  # the `error` codes each status carries (service.errors), for the OpenAPI description
    400: "`bad_request` (a body that is not JSON), `unknown_variant` (an X-Variant not allow-listed)",
    401: "`unauthorized`: admin endpoints need the bearer token",
    404: "`unknown_request`: no such impression, or past the attribution window",
    408: "`body_timeout`: the body took over MAILREC_BODY_TIMEOUT_S to arrive (connection closed)",
    413: "`payload_too_large`: a body over MAILREC_MAX_BODY_BYTES",
    422: "`validation` (each field named), `invalid_input`, `item_not_served`, `bad_bundle`",
    503: "`not_ready` (bundles loading), `feedback_store_down` (Redis unreachable: retry)",
}
# the admin token, as OpenAPI's bearer scheme; checked by `check_admin`, after the body is validated
admin_bearer = HTTPBearer(scheme_name="adminToken", description="MAILREC_ADMIN_TOKEN", auto_error=False)
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: each the one error shape."""
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


def route(path: str) -> APIRoute:
    """The FastAPI route serving `path`."""
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == path)


@router.post(
    "/recommend",
    tags=["recommendations"],
    response_model=RecommendResponse,
    responses=errors(400, 408, 413, 422, 503),
)
async def post_recommend(
    req: RecommendRequest,
    state: StateDep,
    x_variant: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Rank items for a user; cold users get MAIL's virtual behavior (variant permitting)."""
    out = await recommend(state, req, x_variant, request_id(x_request_id))
    return json_response(out.body, headers=out.headers)


@router.post(
    "/feedback",
    tags=["recommendations"],
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


@router.get("/livez", tags=["probes"])
async def livez() -> dict[str, str]:
    """Liveness: the process answers. No dependency checks."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["probes"],
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


@router.get("/models", tags=["operations"])
async def models(state: StateDep) -> dict[str, Any]:
    """The experiment and the model each variant serves, with the provider it really runs on; this
    replica's rollout state and every live replica's (null while Redis does not answer)."""
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
        "replica": state.rollout.describe(),
        "replicas": await state.rollout.replicas(),
    }


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    state.metrics.tasks.set(len(asyncio.all_tasks()))
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def check_admin(state: StateDep, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = state.settings.admin_token
    if token is None:
        raise Unauthorized("admin endpoints are disabled: set MAILREC_ADMIN_TOKEN")
    given = credentials.credentials if credentials is not None else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token")


@router.post("/admin/reload", tags=["admin"], responses=errors(400, 401, 408, 413, 422))
async def reload(req: ReloadRequest, state: StateDep, credentials: AdminCredentials) -> dict[str, Any]:
    """Load, validate and warm a bundle for a variant, then swap it in and publish it to every replica
    (each loads and validates it itself); a bad bundle is refused and nothing is published."""
    check_admin(state, credentials)
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
    generation = await state.rollout.publish(new)
    return {
        "variant": req.variant,
        "model_version": new.version,
        "previous_version": old.version if old else None,
        "model": new.describe(),
        # every replica loads it within about MAILREC_ROLLOUT_POLL_S; null: Redis did not answer,
        # this replica alone serves it
        "rollout_generation": generation,
    }
