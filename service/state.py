"""What one app instance holds, built in `create_app`'s lifespan and read by every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.bundles import ModelRegistry
from service.cache import EmbeddedRedis, RecentVectors, RedisStore
from service.config import Settings
from service.contract import FloatArray
from service.experiments import Experiment
from service.metrics import Metrics
from service.rollout import Rollout


@dataclass
class AppState:
    settings: Settings
    experiment: Experiment
    registry: ModelRegistry
    store: RedisStore
    metrics: Metrics
    rollout: Rollout
    embedded: EmbeddedRedis | None = None
    ready: bool = False
    # single-flight: vectors being computed, and those computed in the last seconds, by cache key
    inflight: dict[str, asyncio.Future[FloatArray]] = field(default_factory=dict)
    recent: RecentVectors = field(default_factory=RecentVectors)


async def get_state(request: Request) -> AppState:
    """The app's state. `async` on purpose: FastAPI runs a plain `def` dependency in its thread pool,
    a thread hop per request (measured: benchmarks/results/serving-notes.md, History)."""
    state: AppState = request.app.state.mailrec
    return state


StateDep = Annotated[AppState, Depends(get_state)]
