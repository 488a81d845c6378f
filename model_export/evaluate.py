"""Recompute a bundle's test metrics through onnxruntime alone.

Reads the raw dataset and the split recorded in the bundle (`split.json`), encodes every test
sample with `service.contract.encode()` exactly as a live request would be (history = the user's
earlier interactions, deleted for new users), scores it with the service's `Towers`, and compares
with the metrics the training run wrote. No torch, no training-side feature code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from model_export import catalog as task
from model_export import data as datasets
from model_export import metrics
from model_export.protocol import behavior_mask, chronological_order
from service.candidates import CandidateStage, PriorStage, RetrieveOptions, prior_stage
from service.contract import (
    SPLIT_FILE,
    Bundle,
    Encoded,
    FloatArray,
    IntArray,
    blend_gate,
    encode,
    load_bundle,
)
from service.inference import SessionOptions, Towers


def _histories(
    raw: datasets.Interactions, clicks_only: bool, seed: int
) -> dict[str, tuple[list[str], list[int]]]:
    """Per user: items and timestamps of the interactions behavior may use, oldest first."""
    order = chronological_order(raw, seed)
    order = order[behavior_mask(raw, clicks_only)[order]]
    out: dict[str, tuple[list[str], list[int]]] = {}
    ts = raw.timestamp
    for i in order.tolist():
        items, times = out.setdefault(str(raw.user[i]), ([], []))
        items.append(str(raw.item[i]))
        times.append(int(ts[i]) if ts is not None else 0)
    return out


class RequestInputs:
    """A user's model inputs at a moment, as a live request sends them (history = earlier
    interactions, none for a new user unless the oracle), with the virtual behavior it gets and
    the towers that score it: `cold`'s (the bundle's cold checkpoint) for a user with an unknown
    id and fewer clicks than its manifest's `clicks`, as the service chooses
    (`ServedModel.for_user`), else `towers`."""

    def __init__(
        self,
        bundle: Bundle,
        towers: Towers,
        raw: datasets.Interactions,
        split: dict[str, Any],
        cold: Towers | None = None,
    ):
        man = bundle.manifest
        self.bundle, self.towers, self.raw, self.cold = bundle, towers, raw, cold
        self.histories = _histories(raw, man.behavior.source == "clicks", int(split["seed"]))
        self.derived = split.get("derived_user_attributes", {})
        self.new_users = set(split["new_users"])
        self.oracle = man.model == "oracle"

    def __call__(
        self, user: str, ts: int | None, history: list[str] | None = None
    ) -> tuple[Towers, Encoded, FloatArray | None, float]:
        """`history`: these items as the user's behavior instead of what the split gives (a new
        user's first clicks, say)."""
        attributes = {
            **self.raw.users.get(user, {}),
            **{k: v[user] for k, v in self.derived.items() if user in v},
        }
        items, times = self.histories.get(user, ([], []))
        if history is None:
            if user in self.new_users and not self.oracle:
                history = []
            elif ts is None:
                history = items
            else:
                history = items[: int(np.searchsorted(times, ts, side="left"))]
        context = {"timestamp": ts} if ts is not None else {}
        enc = encode(self.bundle.schema, self.bundle.catalog, user, attributes, history, context)
        towers = self.towers
        if self.cold is not None and self.bundle.scored_cold(enc.user_attrs, enc.n_history):
            towers = self.cold
        gate = blend_gate(enc.n_history, towers.fill_mode, towers.blend_tau)
        virtual = towers.virtual_behavior(enc.user_attrs) if gate > 0 else None
        return towers, enc, virtual, gate


def evaluate_bundle(
    bundle_dir: Path,
    data_dir: str | None,
    progress: bool = True,
    precision: str = "auto",
    retrieve: RetrieveOptions | None = None,
    reveal: int = 0,
) -> dict[str, Any]:
    """The run's test metrics again, through onnxruntime alone: the task's AUC, GAUC and log loss
    (rated test samples, or each liked test sample against its recorded sampled negatives) and
    the whole-catalog ranking of every recorded case, with the ranker in `precision` (auto: the
    bundle's default); with `retrieve`, the same cases ranked through the service's candidate
    stage with these options (`retrieval_cases`).

    `reveal` > 0: test new users with their first `reveal` interactions known, as behavior
    (`first_interactions`; the offline benchmark's few-shot regime, `model_export.fewshot`), in
    the AUC and the ranking; the ranking keeps new users only. The run recorded no such
    metrics: `expected` and `expected_ranking` are None."""
    from tqdm import tqdm

    bundle: Bundle = load_bundle(bundle_dir)
    split = json.loads((bundle.path / SPLIT_FILE).read_text())
    man = bundle.manifest
    raw = datasets.load(man.dataset, data_dir, seed=man.split_seed)
    options = SessionOptions(device="cpu", intra_op_threads=2, ranker_precision=precision)
    towers = Towers(bundle, options)
    at = RequestInputs(bundle, towers, raw, split, Towers(bundle.cold, options) if bundle.cold else None)
    catalog = bundle.catalog
    test = split["test"]
    stamps = test["timestamp"] or [None] * len(test["user"])
    sampled = split.get("sampled_negatives") if (split.get("task") or {}).get("task") == "catalog" else None
    users: list[str] = []
    labels: list[int] = []
    scores: list[float] = []
    negatives = iter(sampled["items"]) if sampled else None
    known = first_interactions(split, at, reveal) if reveal else {}
    rows = zip(test["user"], test["item"], test["label"], stamps, strict=True)
    for user, item, label, ts in tqdm(rows, total=len(stamps), desc="evaluate", disable=not progress):
        if negatives is not None and not label:
            continue  # the catalog task scores liked samples against their sampled negatives
        served, enc, virtual, gate = at(user, ts, known.get(user))
        items = [item, *next(negatives)] if negatives is not None else [item]
        s = served.score(enc, virtual, gate, catalog.rows(items))
        users += [user] * len(items)
        labels += [1] + [0] * (len(items) - 1) if negatives is not None else [label]
        scores += s.tolist()
    is_new = np.array([u in at.new_users for u in users])
    result: dict[str, Any] = {
        "test": metrics.by_group(np.array(users), np.array(labels), np.array(scores), is_new),
        "expected": None if reveal else man.metrics,
        "bundle": str(bundle.path),
        "precision": towers.precision,
        "revealed": reveal,
    }
    if split.get("ranking"):
        cases = split["ranking"]["cases"]
        if reveal:
            cases = revealed_cases(cases, known)
        result["ranking"] = rank_cases(cases, at, catalog, at.new_users)
        result["expected_ranking"] = None if reveal else man.ranking_metrics
        if retrieve is not None:
            stages = {
                t: _stage(b, retrieve) for t, b in ((towers, bundle), (at.cold, bundle.cold)) if t and b
            }
            # as the service: a cold checkpoint's user takes its prior's first rows (more with clicks)
            prior = prior_stage(bundle, retrieve)
            priors = {at.cold: prior} if at.cold is not None and prior is not None else {}
            result["retrieval"] = retrieval_cases(cases, at, catalog, at.new_users, stages, priors)
            result["retrieve_options"] = asdict(retrieve)
    return result


def first_interactions(split: dict[str, Any], at: RequestInputs, n: int) -> dict[str, list[str]]:
    """Each test new user's first `n` interactions that behavior may use, oldest first, among those
    strictly before the user's first test sample: `model_export.fewshot.reveal`'s rule, on the
    recorded split (so never a test sample). Only the strict protocol's split records every held
    sample of a test new user (they are all test; `mail`'s also validate, unrecorded)."""
    if split.get("protocol") != "strict":
        protocol = split.get("protocol")
        raise ValueError(f"revealing first interactions needs the strict protocol's split, not {protocol!r}")
    test = split["test"]
    if test["timestamp"] is None:
        raise ValueError(f"{split.get('dataset')} has no time: 'first n interactions' is undefined")
    first: dict[str, int] = {}
    for user, ts in zip(test["user"], test["timestamp"], strict=True):
        if user in at.new_users:
            first[user] = min(first.get(user, ts), ts)
    out = {}
    for user, cutoff in first.items():
        items, times = at.histories.get(user, ([], []))
        out[user] = items[: min(n, int(np.searchsorted(times, cutoff, side="left")))]
    return out


def revealed_cases(cases: list[dict[str, Any]], known: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The new users' recorded cases with their `known` items as history: not ranked, no longer
    positives (`model_export.fewshot.revealed_cases`); cases with no positive left are dropped."""
    out = []
    for case in cases:
        seen = known.get(case["user"])
        if seen is None:
            continue
        positives = [i for i in case["positives"] if i not in seen]
        if positives:
            exclude = [*case["exclude"], *(i for i in seen if i not in case["exclude"])]
            out.append({**case, "positives": positives, "exclude": exclude, "history": seen})
    return out


def _ranking_set(cases: list[dict[str, Any]], catalog: Any, new_users: set[str]) -> task.RankingSet:
    """The recorded cases as a ranking set: positives, the items excluded, which users are new."""
    return task.RankingSet(
        rows=np.arange(len(cases), dtype=np.int64),
        positives=[catalog.rows(c["positives"]) for c in cases],
        exclude=[catalog.rows(c["exclude"]) for c in cases],
        is_new=np.array([c["user"] in new_users for c in cases], bool),
    )


def _tie_rank(catalog: Any) -> IntArray:
    """Each catalog row's place among equal scores: by item id, as the service breaks ties."""
    order = np.argsort(np.array(catalog.ids, dtype=object), kind="stable")
    tie_rank = np.empty(len(catalog), np.int64)
    tie_rank[order] = np.arange(len(catalog))
    return tie_rank


def _stage(bundle: Bundle, retrieve: RetrieveOptions) -> CandidateStage:
    """The service's candidate stage over `bundle`'s own item vectors."""
    if bundle.item_vectors_path is None:
        raise ValueError(f"{bundle.path} has no item vectors (exported before them)")
    vectors = np.load(bundle.item_vectors_path, allow_pickle=False)
    return CandidateStage(vectors, bundle.catalog.popularity, retrieve)


def rank_cases(
    cases: list[dict[str, Any]], at: RequestInputs, catalog: Any, new_users: set[str]
) -> dict[str, Any]:
    """Whole-catalog ranking metrics of the recorded cases, every catalog item scored by onnxruntime."""
    n = len(catalog)
    all_rows = np.arange(1, n + 1, dtype=np.int64)
    ranking = _ranking_set(cases, catalog, new_users)

    def score(idx: IntArray) -> FloatArray:
        out = np.empty((len(idx), n), np.float32)
        for b, i in enumerate(idx.tolist()):
            towers, enc, virtual, gate = at(cases[i]["user"], cases[i]["timestamp"], cases[i].get("history"))
            out[b] = towers.score(enc, virtual, gate, all_rows)
        return out

    return task.ranking_metrics(ranking, score, n, _tie_rank(catalog))


def retrieval_cases(
    cases: list[dict[str, Any]],
    at: RequestInputs,
    catalog: Any,
    new_users: set[str],
    stages: dict[Towers, CandidateStage],
    priors: dict[Towers, PriorStage] | None = None,
    top: int = 100,
) -> dict[str, Any]:
    """The candidate stage (`stages`: by the towers it serves, each bundle's own; `priors`: the
    towers whose users take their prior's first rows instead, as the service's cold
    checkpoint does) against whole-catalog scoring on the recorded cases: per group, its
    recall of the whole catalog's top `top` (seen items excluded from both) and the ranking metrics
    when only the stage's candidates are ranked (the others score -inf), both by onnxruntime."""
    n = len(catalog)
    all_rows = np.arange(1, n + 1, dtype=np.int64)
    ranking = _ranking_set(cases, catalog, new_users)
    recall = np.zeros(len(cases))
    sizes = np.zeros(len(cases))

    def score(idx: IntArray) -> FloatArray:
        out = np.full((len(idx), n), -np.inf, np.float32)
        for b, i in enumerate(idx.tolist()):
            towers, enc, virtual, gate = at(cases[i]["user"], cases[i]["timestamp"], cases[i].get("history"))
            stage, prior = stages[towers], (priors or {}).get(towers)
            whole = towers.score(enc, virtual, gate, all_rows)
            seen = ranking.exclude[i]
            if prior is not None and prior.rows_for(enc.n_history):
                rows = prior.search(enc.user_attrs, extra=len(seen), n_history=enc.n_history)
            else:
                probe_scores = whole[stage.probes - 1]  # what the ranker gives the probes
                rows = np.concatenate([stage.probes, stage.search(probe_scores, extra=len(seen))])
            rows = rows[~np.isin(rows, seen)]
            out[b, rows - 1] = towers.score(enc, virtual, gate, rows)
            allowed = np.ones(n, bool)
            allowed[seen - 1] = False
            best = all_rows[allowed][np.argsort(-whole[allowed], kind="stable")[:top]]
            recall[i] = np.isin(best, rows).mean()
            sizes[i] = len(rows)
        return out

    result: dict[str, Any] = task.ranking_metrics(ranking, score, n, _tie_rank(catalog))
    for group, mask in (("new", ranking.is_new), ("old", ~ranking.is_new), ("all", slice(None))):
        if len(recall[mask]) == 0:  # no such user (revealed cases hold new users only)
            result[group].update({f"recall_of_top{top}": math.nan, "candidates": math.nan})
            continue
        result[group][f"recall_of_top{top}"] = float(recall[mask].mean())
        result[group]["candidates"] = float(sizes[mask].mean())
    return result


RANKING_ATOL = 2e-3  # float32 probabilities vs float64 logits can swap near-tied items


def compare(result: dict[str, Any]) -> float:
    """Largest absolute difference between recomputed and recorded metrics (AUC, GAUC, log loss;
    whole-catalog metrics scaled so that RANKING_ATOL counts as the pairwise tolerance, 1e-4)."""
    worst = 0.0
    pairs: list[tuple[Any, Any, tuple[str, ...], float]] = [
        (result["test"], result["expected"], ("auc", "gauc", "logloss"), 1.0)
    ]
    if result.get("expected_ranking"):
        names: tuple[str, ...] = ("hr@10", "precision@10", "ndcg@10", "recall@50")
        pairs.append((result["ranking"], result["expected_ranking"], names, 1e-4 / RANKING_ATOL))
    for got_all, want_all, names, scale in pairs:
        for group in ("new", "old", "all"):
            for name in names:
                got, want = got_all[group][name], want_all[group][name]
                if want is None or (isinstance(got, float) and math.isnan(got)):
                    if not (want is None and math.isnan(got)):
                        return math.inf
                    continue
                worst = max(worst, abs(got - want) * scale)
    return worst
