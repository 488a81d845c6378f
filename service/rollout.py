"""One reload for all replicas: a pointer in Redis that every replica watches.

An operator publishes a bundle once: `POST /admin/reload` on any replica loads and validates it
there, swaps it in, then writes the variant's pointer (bundle path, model version, manifest
checksum) with the next generation. Every replica polls the pointers every
`MAILREC_ROLLOUT_POLL_S` (with jitter) and, on a generation it has not handled yet, loads and
validates the bundle itself: a bundle that fails there (or whose content is not the published
version) leaves that replica's old model serving, counted in
`mailrec_model_reloads_total{result="failure"}`, logged, and shown as the replica's error. A
replica that starts later applies the current pointers before it reports ready.

Each replica writes its state (every variant's version and handled generation, its last errors)
under its own key, with a TTL of a few poll periods, and lists itself in an index; `/models` reads
every live replica's state, so an operator watches the rollout converge.

Redis is never required: every call goes through `RedisStore` (its budget and breaker). While
Redis is down the watcher does nothing, and a reload still swaps the model of the replica that got
it (the pointer is not written: the response says so).

Keys (`{p}` = MAILREC_REDIS_PREFIX; `{e}` = the experiment's name, a hash tag: one slot per
experiment):
  {p}:rollout:{{e}}:{variant}   hash: generation, bundle, model_version, manifest_sha256,
                                published_at, published_by (no TTL: the current pointer)
  {p}:replica:{replica_id}      JSON of the replica's state, TTL a few poll periods
  {p}:replicas                  sorted set: replica id -> when it last wrote its state (unix s)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.bundles import ModelRegistry, ServedModel
from service.cache import RedisStore
from service.contract import MANIFEST, sha256_file
from service.errors import BadBundle
from service.experiments import Experiment
from service.metrics import Metrics

log = logging.getLogger(__name__)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Pointer:
    """What a variant's replicas should serve: the bundle published with this generation."""

    variant: str
    generation: int
    bundle: str
    model_version: str
    manifest_sha256: str
    published_at: str
    published_by: str

    def fields(self) -> dict[str, str]:
        """The hash fields written (the generation is the script's to set)."""
        return {
            "variant": self.variant,
            "bundle": self.bundle,
            "model_version": self.model_version,
            "manifest_sha256": self.manifest_sha256,
            "published_at": self.published_at,
            "published_by": self.published_by,
        }

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Pointer | None:
        """The pointer a hash holds, or None (no pointer, or one this code cannot read: logged)."""
        if not raw:
            return None
        try:
            return cls(
                raw["variant"],
                int(raw["generation"]),
                raw["bundle"],
                raw["model_version"],
                raw["manifest_sha256"],
                raw["published_at"],
                raw["published_by"],
            )
        except (KeyError, ValueError) as exc:
            log.warning("unreadable rollout pointer %r: %r", raw, exc)
            return None


def pointer_key(prefix: str, experiment: str, variant: str) -> str:
    return f"{prefix}:rollout:{{{experiment}}}:{variant}"


def replica_key(prefix: str, replica_id: str) -> str:
    return f"{prefix}:replica:{replica_id}"


def replicas_key(prefix: str) -> str:
    return f"{prefix}:replicas"


@dataclass
class VariantRollout:
    """One variant as this replica sees it: the last generation handled and its last failure."""

    generation: int = 0  # 0: no pointer handled yet (serving the experiment file's bundle)
    error: dict[str, Any] | None = None  # {"generation", "bundle", "detail", "at"} of the last failure


class Rollout:
    """This replica's side of a rollout: publish a pointer, watch the pointers, report its state."""

    def __init__(
        self,
        replica_id: str,
        experiment: Experiment,
        registry: ModelRegistry,
        store: RedisStore,
        metrics: Metrics,
        poll_s: float,
    ) -> None:
        self.replica_id = replica_id
        self.experiment = experiment
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.poll_s = poll_s
        self.ttl_s = 3 * poll_s + 1  # a replica that missed about three polls is gone
        self.variants = {v.name: VariantRollout() for v in experiment.variants}
        self.started_at = utc_now()
        self._task: asyncio.Task[None] | None = None

    @property
    def prefix(self) -> str:
        return self.store.prefix

    def _pointer_keys(self) -> list[str]:
        return [pointer_key(self.prefix, self.experiment.name, v) for v in self.variants]

    # --- publishing ------------------------------------------------------------------------------

    async def publish(self, model: ServedModel) -> int | None:
        """Point every replica at `model`'s bundle (just loaded here); the generation, or None if
        Redis did not answer (then only this replica serves it)."""
        bundle = model.bundle.path.resolve()
        fields = Pointer(
            model.variant,
            0,
            str(bundle),
            model.version,
            sha256_file(bundle / MANIFEST),
            utc_now(),
            self.replica_id,
        ).fields()
        key = pointer_key(self.prefix, self.experiment.name, model.variant)
        generation = await self.store.publish_rollout(key, fields)
        if generation is None:
            log.warning(
                "variant %s: %s reloaded on replica %s only: Redis did not answer, nothing published",
                model.variant,
                model.version,
                self.replica_id,
            )
            return None
        self.variants[model.variant] = VariantRollout(generation)  # this replica has it already
        log.info("variant %s: published %s as generation %d", model.variant, model.version, generation)
        await self.report()
        return generation

    # --- watching --------------------------------------------------------------------------------

    async def poll(self) -> bool:
        """Read the pointers once and apply each new one, then write this replica's state; whether
        Redis answered."""
        raw = await self.store.read_rollout(self._pointer_keys())
        if raw is None:
            return False
        for found in raw:
            pointer = Pointer.from_hash(found)
            if pointer is not None and pointer.variant in self.variants:
                if pointer.generation > self.variants[pointer.variant].generation:
                    await self.apply(pointer)
        await self.report()
        return True

    async def apply(self, pointer: Pointer) -> None:
        """Serve `pointer`'s bundle if it loads, validates and is the published version here; else
        keep the old model and record why."""
        variant = pointer.variant
        current = self.registry.get(variant)
        if current.version == pointer.model_version:  # already served (the publisher, a restart)
            self.variants[variant].generation = pointer.generation
            return
        kind = next(v.kind for v in self.experiment.variants if v.name == variant)

        def published(model: ServedModel) -> None:
            if model.version != pointer.model_version:
                raise BadBundle(
                    f"{pointer.bundle} is version {model.version} on this replica, "
                    f"not the published {pointer.model_version}"
                )

        try:
            new, old = await self.registry.reload(variant, Path(pointer.bundle), kind, check=published)
        except Exception as exc:
            self.metrics.reloads.labels(variant, "failure").inc()
            error = {"generation": pointer.generation, "bundle": pointer.bundle, "detail": str(exc)}
            self.variants[variant] = VariantRollout(pointer.generation, {**error, "at": utc_now()})
            log.error(
                "variant %s: rollout generation %d (%s) failed on replica %s, %s keeps serving: %s",
                variant,
                pointer.generation,
                pointer.model_version,
                self.replica_id,
                current.version,
                exc,
            )
            return
        self.metrics.reloads.labels(variant, "success").inc()
        self.variants[variant] = VariantRollout(pointer.generation)
        log.info(
            "variant %s: rollout generation %d: %s -> %s on replica %s",
            variant,
            pointer.generation,
            old.version if old else None,
            new.version,
            self.replica_id,
        )

    async def run(self) -> None:
        """Poll until cancelled, every `poll_s` give or take 20% (replicas started together spread)."""
        while True:
            await asyncio.sleep(self.poll_s * random.uniform(0.8, 1.2))
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the watcher: log it, try again next period
                log.exception("rollout poll failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="mailrec-rollout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- reporting -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """This replica's state: each variant's version, handled generation and last failure."""
        served = {m.variant: m for m in self.registry.all()}
        return {
            "replica": self.replica_id,
            "started_at": self.started_at,
            "reported_at": utc_now(),
            "variants": {
                name: {
                    "model_version": served[name].version,
                    "bundle": str(served[name].bundle.path),
                    "generation": state.generation,
                    "error": state.error,
                }
                for name, state in self.variants.items()
                if name in served  # (all of them once the replica is ready)
            },
        }

    async def report(self) -> bool:
        """Write this replica's state (with its TTL); whether Redis answered."""
        return await self.store.write_replica(
            replica_key(self.prefix, self.replica_id),
            replicas_key(self.prefix),
            self.replica_id,
            orjson.dumps(self.describe()),
            self.ttl_s,
        )

    async def replicas(self) -> list[dict[str, Any]] | None:
        """Every live replica's state, by replica id; None if Redis did not answer."""
        found = await self.store.read_replicas(
            replicas_key(self.prefix), lambda rid: replica_key(self.prefix, rid), self.ttl_s
        )
        if found is None:
            return None
        return sorted((orjson.loads(raw) for raw in found), key=lambda r: str(r["replica"]))
