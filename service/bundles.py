"""The model each variant serves: loaded, validated and warmed before it is swapped in.

A request reads `registry.get(variant)` once and uses that object throughout, so both towers of
one request always come from one model version. A reload builds the new `ServedModel` off the
event loop, checks it (bundle contract, ONNX signatures, golden scores, warm-up) and only then
replaces the reference; a bad bundle raises and the old model keeps serving.

Device calls that leave the event loop (the towers on CUDA, the micro-batcher's batches) run on the
registry's one device thread, made once: a reload swaps sessions, never threads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from service.batching import MicroBatcher
from service.candidates import CandidateStage, PriorStage, candidate_stage, prior_stage
from service.coldscores import ColdScores
from service.contract import Bundle, ContractError, FloatArray, IntArray, load_bundle
from service.errors import BadBundle
from service.inference import SessionOptions, Towers
from service.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


def settle_heap() -> None:
    """Collect, then move every object alive now (bundles, sessions, catalogs, imported modules) to
    the collector's permanent generation, so that the full collections that serving triggers scan
    only what requests allocate: it halved p99 under load with throughput unchanged
    (benchmarks/results/serving-notes.md, commit 566a9d0). Once at start and after each reload
    (one full collection then)."""
    gc.collect()
    gc.freeze()


@dataclass
class ServedModel:
    """One loaded bundle plus the per-catalog arrays a request needs, computed once."""

    variant: str
    bundle: Bundle
    towers: Towers
    loaded_at: float
    executor: Executor | None = None  # the registry's device thread (None: device calls inline)
    kind: str = "model"  # "popularity": ranks by the catalog's training counts, not the towers
    # the bundle's cold checkpoint, served the same way: it scores a user with an unknown id and
    # fewer clicks than its manifest says (`for_user`); None: this model scores everyone
    unseen: ServedModel | None = None
    all_rows: IntArray = field(init=False)  # (I,) catalog rows 1..I
    item_ids: npt.NDArray[np.object_] = field(init=False)  # (I + 1,) raw id by row ("" for PAD)
    tie_rank: IntArray = field(init=False)  # (I + 1,) rank of each row's raw id, for tie-breaks
    batcher: MicroBatcher | None = field(init=False)  # ranker calls merged across requests, if on
    popularity: FloatArray | None = field(init=False)  # (I + 1,) the scores a popularity variant serves
    candidates: CandidateStage | None = field(init=False)  # None: whole-catalog scoring
    # a cold user's candidates from the ranker's prior (a cold checkpoint's, `prior_stage`); None:
    # the candidate stage's search, or the whole catalog
    prior_candidates: PriorStage | None = None
    cold: ColdScores | None = field(init=False)  # cold users' remembered scores (None: off)

    def __post_init__(self) -> None:
        opts = self.towers.options
        self.batcher = (
            MicroBatcher(
                self.towers, opts.microbatch_wait_ms / 1000, opts.microbatch_max_rows, executor=self.executor
            )
            if self.towers.ranker_batch is not None and self.kind == "model"
            else None
        )
        catalog = self.bundle.catalog
        self.popularity = None
        if self.kind == "popularity":
            if catalog.popularity is None:
                raise BadBundle(
                    f"{self.bundle.path}: no popularity counts in its catalog (exported before them)"
                )
            self.popularity = np.r_[0, catalog.popularity].astype(np.float32)
        self.candidates = None
        if self.kind == "model":
            self.candidates = candidate_stage(self.bundle, opts.retrieve)
        self.all_rows = np.arange(1, len(catalog) + 1, dtype=np.int64)
        memo = opts.cold_scores
        applies = self.kind == "model" and ColdScores.applies(len(catalog), memo)
        self.cold = ColdScores(self.all_rows, memo) if applies else None
        self.item_ids = np.array(["", *catalog.ids], dtype=object)
        order = np.argsort(self.item_ids, kind="stable")
        self.tie_rank = np.empty(len(order), np.int64)
        self.tie_rank[order] = np.arange(len(order))

    @property
    def version(self) -> str:
        return self.bundle.version

    def for_user(self, user_attrs: IntArray, n_history: int) -> ServedModel:
        """The model that scores this user: the cold checkpoint for a user the model never saw
        (unknown id, fewer clicks than the manifest's `cold_checkpoint.clicks`), where the bundle
        has one; else this one."""
        if self.unseen is not None and self.bundle.scored_cold(user_attrs, n_history):
            return self.unseen
        return self

    def stop_fills(self) -> None:
        """Cancel the memo fills under way, this model's and its cold checkpoint's (at shutdown,
        and once a reload has replaced it: no request waits on a fill)."""
        for served in (self, self.unseen):
            if served is not None and served.cold is not None:
                served.cold.cancel()

    @property
    def model_name(self) -> str:
        """What this variant serves: the bundle's model, or `popularity`."""
        return "popularity" if self.kind == "popularity" else self.bundle.model

    async def on_device(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a tower call: inline when every session runs on the CPU (the thread hop would
        cost about what the call does), else on the device thread, so the event loop never waits."""
        if self.towers.inline or self.executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def describe(self) -> dict[str, Any]:
        man = self.bundle.manifest
        return {
            "variant": self.variant,
            "kind": self.kind,
            "model": self.model_name,
            "about": ABOUT.get(self.model_name, ""),
            "model_version": self.version,
            "ranker": man.ranker,
            "provider": self.towers.provider,
            "ranker_precision": self.towers.precision,
            "device": self.towers.describe_device(),
            "bundle": str(self.bundle.path),
            "dataset": man.dataset,
            "protocol": man.protocol,
            "fill": self.towers.fill_mode,
            # the ranker's weights that read the virtual behavior: shared with real history, or own
            "virtual_reading": man.fill.virtual_reading if self.towers.zero_shot is not None else None,
            "microbatch": self.batcher is not None,
            "zero_shot": self.towers.zero_shot is not None and self.kind == "model",
            "catalog_items": len(self.bundle.catalog),
            "candidate_stage": self.candidates is not None,
            "cold_scores": self.cold is not None,
            "cold_checkpoint": None
            if self.unseen is None or man.cold_checkpoint is None
            else {
                "epoch": man.cold_checkpoint.epoch,
                "scale": man.cold_checkpoint.scale,
                "clicks": man.cold_checkpoint.clicks,
                "model_version": self.unseen.version,
                "serves": _serves(man.cold_checkpoint.clicks),
                # the candidates are the prior's first rows (+ k, and the clicks): with no history,
                # and with clicks; None or 0: off (the search)
                "prior_candidates": None
                if self.unseen.prior_candidates is None
                else self.unseen.prior_candidates.rows,
                "prior_candidates_clicked": None
                if self.unseen.prior_candidates is None
                else self.unseen.prior_candidates.clicked,
            },
            "created_at": man.created_at,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "task": man.task,
            "offline_metrics": man.metrics,
            "offline_ranking": man.ranking_metrics,
        }


ABOUT = {
    "mail": "ranking tower + zero-shot tower: a cold user's virtual behavior from their attributes",
    "control": "ranking tower alone: a cold user has empty behavior",
    "oracle": "ranking tower trained with new users' real behavior (offline ceiling)",
    "popularity": "the items most liked in training, minus what the user has seen; no model",
}


def load_model(
    variant: str, path: Path, options: SessionOptions, executor: Executor | None = None, kind: str = "model"
) -> ServedModel:
    """Load, validate and warm one bundle, and its cold checkpoint if it has one (blocking: call it
    off the event loop)."""
    try:
        bundle = load_bundle(path)
        towers = _ready_towers(bundle, options)
        unseen = None
        if bundle.cold is not None and kind == "model":
            cold = _ready_towers(bundle.cold, options)
            unseen = ServedModel(variant, bundle.cold, cold, time.time(), executor, kind)
            # its learned logit is scaled towards the prior: the prior's first items are the candidates
            unseen.prior_candidates = prior_stage(bundle, options.retrieve)
    except ContractError as exc:
        raise BadBundle(str(exc)) from exc
    log.info(
        "variant %s: loaded %s (%s, %s, %s ranker) from %s on %s",
        variant,
        bundle.version,
        bundle.model,
        bundle.manifest.ranker,
        towers.precision,
        path,
        towers.provider,
    )
    return ServedModel(variant, bundle, towers, time.time(), executor, kind, unseen)


def _ready_towers(bundle: Bundle, options: SessionOptions) -> Towers:
    towers = Towers(bundle, options)
    towers.check_golden()
    towers.warm_up()
    return towers


class ModelRegistry:
    """The model serving each variant, and `mailrec_model_info` saying which."""

    def __init__(self, options: SessionOptions, metrics: Metrics) -> None:
        self.options = options
        self.metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self._lock = asyncio.Lock()
        # one thread for every device call of every model (its thread starts on first use)
        self.device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailrec-device")

    def load(self, variant: str, path: Path, kind: str = "model") -> ServedModel:
        """`load_model` with this registry's options and device thread (blocking)."""
        return load_model(variant, path, self.options, self.device, kind)

    def close(self) -> None:
        """Let the device thread finish what it was given, then end it (at shutdown)."""
        self.device.shutdown(wait=True)

    def get(self, variant: str) -> ServedModel:
        return self._models[variant]

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def put(self, model: ServedModel) -> None:
        """Serve `model` for its variant from now on (one reference swap, atomic for readers)."""
        self._models[model.variant] = model
        ranker = model.bundle.manifest.ranker
        self.metrics.set_model(
            model.variant,
            model.model_name,
            model.version,
            ranker,
            model.towers.provider,
            model.towers.precision,
        )

    async def reload(
        self,
        variant: str,
        path: Path,
        kind: str = "model",
        check: Callable[[ServedModel], None] | None = None,
    ) -> tuple[ServedModel, ServedModel | None]:
        """Load `path` for `variant` and swap it in; returns (new, old). Raises BadBundle, or what
        `check` (called on the loaded model before the swap) raises."""
        async with self._lock:  # one reload at a time
            loop = asyncio.get_running_loop()
            new = await loop.run_in_executor(None, self.load, variant, path, kind)
            if check is not None:
                check(new)
            old = self._models.get(variant)
            self.put(new)
            if old is not None:
                old.stop_fills()  # its memo is no longer read
            settle_heap()
            return new, old


def _serves(clicks: int) -> str:
    """Whom a cold checkpoint scores, in words (`ColdCheckpoint.clicks`)."""
    if clicks <= 1:
        return "users with an unknown id and no history"
    return f"users with an unknown id and fewer than {clicks} clicks"
