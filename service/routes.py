"""HTTP routes: they wire the steps in `service.recommend` and render results; no computing."""

from __future__ import annotations

import hmac
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response

from service.errors import NotReady, Unauthorized, UnknownVariant
from service.metrics import CONTENT_TYPE
from service.recommend import feedback, recommend
from service.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
)
from service.state import StateDep

router = APIRouter()
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def request_id(given: str | None) -> str:
    return given if given is not None and REQUEST_ID.match(given) else uuid.uuid4().hex


@router.post("/recommend", response_model=RecommendResponse)
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


@router.post("/feedback", status_code=202, response_model=FeedbackResponse)
async def post_feedback(req: FeedbackRequest, state: StateDep) -> Response:
    """Record a click on an item of an earlier response; counted once, credited to its variant."""
    body = await feedback(state, req)
    return json_response(body, 202, {"X-Request-Id": req.request_id})


@router.get("/livez")
async def livez() -> dict[str, str]:
    """Liveness: the process answers. No dependency checks."""
    return {"status": "ok"}


@router.get("/readyz")
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
            "variants": [{"name": v.name, "weight": v.weight, "bundle": str(v.bundle)} for v in exp.variants],
            "override_allowed": sorted(exp.overridable),
        },
        "models": [m.describe() for m in state.registry.all()],
    }


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def check_admin(state: StateDep, authorization: str | None) -> None:
    token = state.settings.admin_token
    if token is None:
        raise Unauthorized("admin endpoints are disabled: set MAILREC_ADMIN_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token")


@router.post("/admin/reload")
async def reload(
    req: ReloadRequest, state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Load, validate and warm a bundle for a variant, then swap it in; a bad bundle is refused."""
    check_admin(state, authorization)
    names = state.experiment.names
    if req.variant not in names:
        raise UnknownVariant(req.variant, names)
    default = next(v.bundle for v in state.experiment.variants if v.name == req.variant)
    path = Path(req.bundle) if req.bundle else default
    try:
        new, old = await state.registry.reload(req.variant, path)
    except Exception:
        state.metrics.reloads.labels(req.variant, "failure").inc()
        raise
    state.metrics.reloads.labels(req.variant, "success").inc()
    man = new.bundle.manifest
    state.metrics.set_model(req.variant, man["model"], new.version, man["ranker"], new.towers.provider)
    return {
        "variant": req.variant,
        "model_version": new.version,
        "previous_version": old.version if old else None,
        "model": new.describe(),
    }
