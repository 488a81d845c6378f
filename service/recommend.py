"""The steps of POST /recommend and POST /feedback, each small enough to test on its own.

recommend: ready? -> check limits -> assign variant -> encode -> one Redis round trip (cached vector +
stored clicks) -> history -> virtual behavior if cold (cache, else zero_shot.onnx, computed once
per key, written back off the response path) -> candidates (the given ones, the whole catalog, or
above MAILREC_RETRIEVE_ABOVE items the candidate stage's: `service.candidates`; for a cold user
scored by the cold checkpoint, the items its prior ranks first, minus its clicks) -> ranker.onnx (or,
for a cold user whose encoded attributes and context were scored before, the model's remembered
whole-catalog scores: `service.coldscores`) -> top-k -> impression record -> metrics and the
request's log fields.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.bundles import ServedModel
from service.cache import Budget, Impression, vector_key
from service.coldscores import memo_key
from service.contract import (
    ContractError,
    Encoded,
    FloatArray,
    IntArray,
    UnknownItems,
    blend_gate,
    encode,
)
from service.errors import FeedbackStoreDown, InvalidInput, ItemNotServed, NotReady, UnknownRequest
from service.logs import note
from service.schemas import FeedbackRequest, RecommendRequest
from service.state import AppState

SORT_ALL = 256  # top_k: up to this many candidates, sort them all (serving-notes.md, a141498)


@dataclass(frozen=True)
class Recommendation:
    body: dict[str, Any]
    headers: dict[str, str]


def check_limits(req: RecommendRequest, state: AppState) -> int:
    """The deployment's bounds on k and list lengths; returns k."""
    s = state.settings
    k = req.k if req.k is not None else s.default_k
    problems = []
    if k > s.max_k:
        problems.append({"field": "body.k", "message": f"k must be at most {s.max_k}"})
    if req.history is not None and len(req.history) > s.max_history:
        problems.append({"field": "body.history", "message": f"at most {s.max_history} items"})
    if req.candidates is not None and len(req.candidates) > s.max_candidates:
        problems.append({"field": "body.candidates", "message": f"at most {s.max_candidates} items"})
    if problems:
        raise InvalidInput(problems)
    return k


def encode_request(req: RecommendRequest, model: ServedModel) -> tuple[Encoded, IntArray, IntArray | None]:
    """(cold encoding, request history rows, candidate rows); unknown ids or fields are a 422."""
    bundle = model.bundle
    schema = bundle.schema
    context: dict[str, object] = dict(req.context or {})
    if not context and any(f.source == "timestamp" for f in schema.context_fields):
        context["timestamp"] = int(time.time())
    try:
        enc = encode(schema, bundle.catalog, req.user_id, req.attributes, (), context)
        history = bundle.catalog.rows(req.history) if req.history else np.zeros(0, np.int64)
        # deduplicated by id, first occurrence kept (a dict in C: cheaper than np.unique on rows)
        unique = list(dict.fromkeys(req.candidates)) if req.candidates is not None else None
        candidates = bundle.catalog.rows(unique) if unique is not None else None
    except UnknownItems as exc:
        raise InvalidInput({"message": "unknown item ids", "item_ids": exc.ids[:100]}) from exc
    except ContractError as exc:
        raise InvalidInput({"message": str(exc)}) from exc
    return enc, history, candidates


def candidate_rows(model: ServedModel, given: IntArray | None, seen: IntArray) -> IntArray:
    """The rows to score: the given ones (deduplicated by `encode_request`), else the catalog minus
    what was seen."""
    if given is not None:
        return given
    if len(seen) == 0:
        return model.all_rows
    keep = np.ones(len(model.all_rows) + 1, bool)
    keep[seen] = False
    return model.all_rows[keep[1:]]


def top_k(scores: FloatArray, rows: IntArray, k: int, tie_rank: IntArray) -> IntArray:
    """Indices into `rows` of the k best scores, ties broken by item id; no loop over candidates."""
    n = len(rows)
    if n <= SORT_ALL:  # one sort of everything is cheaper than partitioning first
        return np.lexsort((tie_rank[rows], -scores))[:k]
    kth = np.partition(scores, n - k)[n - k]  # the k-th best score
    pool = np.flatnonzero(scores >= kth)
    order = np.lexsort((tie_rank[rows[pool]], -scores[pool]))
    return pool[order[:k]]


def cache_outcome(key: str | None, cached: FloatArray | None, redis_ok: bool) -> str:
    """The virtual-behavior cache lookup, for the request's log line: off (no vector wanted: the
    variant has no zero-shot tower, or the request's history switches it off), unavailable (Redis
    did not answer), hit or miss."""
    if key is None:
        return "off"
    if not redis_ok:
        return "unavailable"
    return "hit" if cached is not None else "miss"


async def virtual_behavior(
    state: AppState, model: ServedModel, key: str, enc: Encoded, redis_ok: bool
) -> FloatArray:
    """Compute a missing vector once per key, however many requests miss it at the same time.

    Requests whose Redis read was answered before the write-back landed would miss too, so a
    computed vector also stays in a small in-process memo (content-addressed: never stale).
    """
    recent = state.recent.get(key)
    if recent is not None:
        return recent
    pending = state.inflight.get(key)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[FloatArray] = asyncio.get_running_loop().create_future()
    state.inflight[key] = future
    try:
        started = time.perf_counter()
        vector = await model.on_device(model.towers.virtual_behavior, enc.user_attrs)
        state.metrics.child(state.metrics.inference, "zero_shot", model.towers.provider).observe(
            time.perf_counter() - started
        )
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved here; waiters re-raise it
        raise
    else:
        future.set_result(vector)
        state.recent.put(key, vector)
    finally:
        state.inflight.pop(key, None)
    if redis_ok:
        state.store.write_vector_later(key, vector)
    return vector


async def score(
    state: AppState, model: ServedModel, enc: Encoded, virtual: FloatArray | None, gate: float, rows: IntArray
) -> FloatArray:
    """ranker.onnx inline on CPU (cheaper than a thread hop at these sizes), on the device thread on
    CUDA, or via the micro-batcher; a popularity variant's scores are its training counts."""
    if model.popularity is not None:
        return model.popularity[rows]
    towers = model.towers
    observe = state.metrics.child(state.metrics.inference, "ranker", towers.provider).observe
    if not len(rows):
        return np.zeros(0, np.float32)
    if model.batcher is not None:
        model.batcher.observe = observe  # per ONNX call, so per batch
        return await model.batcher.score(enc, virtual, gate, rows)
    started = time.perf_counter()
    scores = await model.on_device(towers.score, enc, virtual, gate, rows)
    observe(time.perf_counter() - started)
    return scores


async def retrieve_and_score(
    state: AppState,
    model: ServedModel,
    enc: Encoded,
    virtual: FloatArray | None,
    gate: float,
    seen: IntArray,
    k: int,
) -> tuple[IntArray, FloatArray]:
    """The candidate stage (`service.candidates`): the ranker scores the probes, the search picks
    the other candidates (at least k besides the seen ones), the ranker scores those; (rows, their
    ranker scores), seen rows dropped."""
    stage = model.candidates
    assert stage is not None
    probe_scores = await score(state, model, enc, virtual, gate, stage.probes)
    found = stage.search(probe_scores, extra=len(seen) + k)
    rows = np.concatenate([stage.probes, found])
    scores = np.concatenate([probe_scores, await score(state, model, enc, virtual, gate, found)])
    if len(seen):
        keep = ~np.isin(rows, seen)
        rows, scores = rows[keep], scores[keep]
    return rows, scores


async def record_impression(
    state: AppState,
    model: ServedModel,
    user_id: str,
    variant: str,
    source: str,
    item_ids: list[str],
    redis_ok: bool,
    budget: Budget,
) -> str | None:
    """The impression's id if Redis stored its record, else None (no click on it can count);
    counted either way: stored, failed (the write went unanswered) or skipped (Redis had not
    answered this request: no write tried)."""
    if not item_ids:
        return None
    impression_id = None
    if redis_ok:
        # the key /feedback credits: ours, unguessable, never the client's X-Request-Id
        candidate = secrets.token_urlsafe(16)
        imp = Impression(state.experiment.name, variant, source, model.version, user_id, item_ids)
        if await state.store.save_impression(candidate, imp, budget):
            impression_id = candidate
    result = "stored" if impression_id is not None else "failed" if redis_ok else "skipped"
    state.metrics.child(state.metrics.impression_writes, result).inc()
    return impression_id


async def recommend(
    state: AppState, req: RecommendRequest, override: str | None, request_id: str
) -> Recommendation:
    if not state.ready:
        raise NotReady("bundles are still loading")
    k = check_limits(req, state)
    experiment = state.experiment
    variant, source = experiment.assign(req.user_id, override)
    model = state.registry.get(variant)  # one model for the whole request
    enc, request_rows, given = encode_request(req, model)

    store = state.store
    budget = store.budget()
    # a user whose id the model never saw, with fewer clicks than the bundle's cold checkpoint
    # says (`ColdCheckpoint.clicks`), is scored by it, if it has one (its own virtual behavior,
    # under its own cache key), unless the clicks read with the vector take them past that
    scorer = model.for_user(enc.user_attrs, len(request_rows))
    use_zst = scorer.towers.zero_shot is not None and model.popularity is None
    # a history in the request that already switches the virtual behavior off (stored clicks can
    # only lengthen it): no vector to read, and no cache lookup to count
    towers = scorer.towers
    wanted = use_zst and blend_gate(len(request_rows), towers.fill_mode, towers.blend_tau) > 0
    key = vector_key(store.prefix, scorer.version, enc.user_attrs) if wanted else None
    cached, clicks, redis_ok = await store.read_user(key, req.user_id, budget)
    index = model.bundle.catalog.index
    click_rows = np.fromiter((index[c] for c in clicks if c in index), np.int64)
    history = np.concatenate([request_rows, click_rows]) if len(click_rows) else request_rows
    if len(history):  # `encode` already gave the cold encoding (no behavior)
        enc = enc.with_history(history)
    if model.for_user(enc.user_attrs, enc.n_history) is not scorer:  # clicked enough: no longer unseen
        scorer, cached = model, None
        key = vector_key(store.prefix, model.version, enc.user_attrs) if use_zst else None
    towers = scorer.towers

    gate = blend_gate(enc.n_history, towers.fill_mode, towers.blend_tau)
    uses_virtual = gate > 0 and key is not None
    memo = scorer.cold if enc.n_history == 0 else None  # `service.coldscores`
    memo_at = memo_key(enc) if memo is not None else b""
    remembered = memo.get(memo_at) if memo is not None else None
    virtual = None
    if uses_virtual and remembered is not None:
        if cached is None and redis_ok and remembered.virtual is not None:
            assert key is not None
            store.write_vector_later(key, remembered.virtual)  # Redis lost it: as if computed
    elif uses_virtual:
        if cached is not None and cached.size == towers.virtual_size:
            virtual = cached.reshape(towers.virtual_shape)
        else:
            assert key is not None
            virtual = await virtual_behavior(state, scorer, key, enc, redis_ok)

    if remembered is not None:  # a cold user whose attributes and context were scored before
        rows = given if given is not None else model.all_rows
        scores = remembered.scores[rows]
    elif given is None and (prior := scorer.prior_candidates) is not None and prior.rows_for(enc.n_history):
        # the cold checkpoint's user: the prior's first rows, room for k and the clicks, minus them
        rows = prior.search(enc.user_attrs, extra=k + len(history), n_history=enc.n_history)
        if len(history):
            rows = rows[~np.isin(rows, history)]
        scores = await score(state, scorer, enc, virtual, gate, rows)
    elif given is None and scorer.candidates is not None:
        rows, scores = await retrieve_and_score(state, scorer, enc, virtual, gate, history, k)
    else:
        rows = candidate_rows(model, given, history)
        scores = await score(state, scorer, enc, virtual, gate, rows)
    if memo is not None:
        result = "hit" if remembered is not None else "miss"
        state.metrics.child(state.metrics.cold_scores, variant, result).inc()
        if remembered is None and memo.admit(memo_at):
            state.metrics.child(state.metrics.cold_scores, variant, "fill").inc()
            memo.fill(memo_at, functools.partial(score, state, scorer, enc, virtual, gate), virtual)
    best = top_k(scores, rows, k, model.tie_rank)
    chosen = rows[best]
    item_ids = model.item_ids[chosen].tolist()
    titles = model.bundle.catalog.titles
    items = [
        {"item_id": i, "score": float(s), "title": titles[r - 1]}
        for i, s, r in zip(item_ids, scores[best].tolist(), chosen.tolist(), strict=True)
    ]
    impression_id = await record_impression(
        state, model, req.user_id, variant, source, item_ids, redis_ok, budget
    )

    cold = enc.n_history == 0
    m = state.metrics
    m.child(m.assignments, experiment.name, variant, source).inc()
    m.child(m.recommendations, experiment.name, variant, "true" if cold else "false").inc()
    m.child(m.impressions, experiment.name, variant, source).inc(len(items))
    cache = cache_outcome(key, cached, redis_ok)
    note(variant=variant, model_version=model.version, cold_start=cold, cache=cache)
    body = {
        "request_id": request_id,
        "impression_id": impression_id,
        "experiment": experiment.name,
        "variant": variant,
        "model_version": model.version,
        "cold_start": cold,
        "virtual_weight": gate if uses_virtual else 0.0,
        "items": items,
    }
    headers = {
        "X-Request-Id": request_id,
        "X-Experiment": experiment.name,
        "X-Variant": variant,
        "X-Model-Version": model.version,
    }
    return Recommendation(body, headers)


async def feedback(state: AppState, req: FeedbackRequest) -> dict[str, Any]:
    """Credit a click to the variant and model that served the impression, once."""
    store = state.store
    budget = store.feedback_budget()
    imp, answered = await store.load_impression(req.impression_id, budget)
    if not answered:
        state.metrics.feedback.labels("store_down").inc()
        raise FeedbackStoreDown("Redis is unreachable; the click cannot be attributed now, retry later")
    if imp is None:
        state.metrics.feedback.labels("unknown_request").inc()
        raise UnknownRequest(
            f"impression {req.impression_id!r} was not served here or is older than the "
            f"attribution window ({state.settings.attribution_window_s} s)"
        )
    if req.item_id not in imp.items:
        state.metrics.feedback.labels("item_not_served").inc()
        raise ItemNotServed(f"item {req.item_id!r} was not in impression {req.impression_id!r}")
    counted = await store.record_click(req.impression_id, imp, req.item_id, budget)
    if counted is None:
        state.metrics.feedback.labels("store_down").inc()
        raise FeedbackStoreDown("Redis is unreachable; the click cannot be recorded now, retry later")
    if counted:
        state.metrics.clicks.labels(imp.experiment, imp.variant, imp.source).inc()
    note(variant=imp.variant, model_version=imp.model_version)
    state.metrics.feedback.labels("counted" if counted else "duplicate").inc()
    return {
        "status": "counted" if counted else "duplicate",
        "impression_id": req.impression_id,
        "item_id": req.item_id,
        "variant": imp.variant,
        "model_version": imp.model_version,
    }
