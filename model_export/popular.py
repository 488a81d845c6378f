"""The lists a user gets without a model: the items most liked in training, overall or within the
user's segment of one attribute, scored with the towers' metrics (whole catalog, sampled AUC).

Segment popularity is what an engineer would try before a model (the most liked films among users
of your age): each segment's liked counts, shrunk towards the overall list by `shrink`
pseudo-counts, the segment attribute and the shrinkage chosen on validation new users
(`choose_segment`). It is the bar that says how much a user's attributes alone can tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model_export import catalog as task
from model_export import metrics
from model_export.evaluation import part_pairs, task_record, tie_rank
from model_export.features import EncodedData
from model_export.model import segment_slot
from model_export.protocol import TEST, TRAIN, VAL
from model_export.train import TrainConfig

SHRINK = (300.0, 1_000.0, 3_000.0, 10_000.0)  # pseudo-counts towards the overall list (choices)
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PopularList:
    """Scores of catalog rows 1..I per segment (`table`, S x I) and each user row's segment."""

    table: FloatArray
    segment_of: npt.NDArray[np.int64]  # (U,) row of `table` for each row of data.user_attrs
    field: str | None = None  # None: one segment, the overall list
    shrink: float = 0.0

    def scores(self, data: EncodedData, rows: npt.NDArray[np.int64]) -> FloatArray:
        """(len(rows), I) scores for encoded rows (their users' segments)."""
        return self.table[self.segment_of[data.user[rows]]]


def overall(data: EncodedData) -> PopularList:
    """The most-liked-items list: training liked counts, the same for every user."""
    counts = data.item_counts[1:].astype(np.float64)
    return PopularList(counts[None, :], np.zeros(len(data.user_attrs), np.int64))


def by_segment(data: EncodedData, field: str, shrink: float) -> PopularList:
    """Liked training counts within each value of the user attribute `field` (all its slots),
    shrunk towards the overall list: (c_s(i) + shrink * p(i)) / (n_s + shrink)."""
    values = data.user_attrs[:, task.user_field_slots(data.schema, field)]
    _, segment_of = np.unique(values, axis=0, return_inverse=True)
    segment_of = segment_of.reshape(-1).astype(np.int64)
    share = data.item_counts[1:] / max(int(data.item_counts.sum()), 1)
    table, _ = _shrunk_shares(data, segment_of, int(segment_of.max()) + 1, shrink, share)
    return PopularList(table, segment_of, field, shrink)


def _shrunk_shares(
    data: EncodedData, segment_of: npt.NDArray[np.int64], n_segments: int, shrink: float, share: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(S, I) liked training shares per segment (`segment_of`: each user row's), shrunk towards
    `share` by `shrink` pseudo-counts, and each segment's liked interactions (S,)."""
    liked = (data.part == TRAIN) & (data.label == 1)
    counts = np.zeros((n_segments, len(data.catalog)))
    np.add.at(counts, (segment_of[data.user[liked]], data.item[liked] - 1), 1.0)
    n = counts.sum(1)
    return (counts + shrink * share) / (n[:, None] + shrink), n


def rank(data: EncodedData, popular: PopularList, cases: task.RankingSet) -> dict[str, Any]:
    """Whole-catalog ranking metrics of a popular list for `cases`."""
    return task.ranking_metrics(
        cases, lambda idx: popular.scores(data, cases.rows[idx]), len(data.catalog), tie_rank(data)
    )


def choose_segment(data: EncodedData, single_slot: bool = False) -> tuple[PopularList, list[dict[str, Any]]]:
    """The segment attribute (with `single_slot`, among single-slot ones: what a ranker's prior
    can read) and shrinkage with the best validation NDCG@10 of new users (of all users where
    validation has no new user), the overall list among the choices; and what each choice scored."""
    cases = data.ranking[VAL]
    group = "new" if cases.is_new.any() else "all"
    tried: list[dict[str, Any]] = []
    best: tuple[float, PopularList] | None = None
    fields = [
        f.name for f in data.schema.user_fields if f.name != "user_id" and (f.slots == 1 or not single_slot)
    ]
    for popular in [overall(data)] + [by_segment(data, f, s) for f in fields for s in SHRINK]:
        ndcg = float(rank(data, popular, cases)[group]["ndcg@10"])
        tried.append({"field": popular.field, "shrink": popular.shrink, f"val_ndcg@10_{group}": ndcg})
        if best is None or ndcg > best[0]:
            best = (ndcg, popular)
    assert best is not None
    return best[1], tried


METHODS = ("popularity", "popularity-segment")  # the benchmarks' names for the two lists


def by_method(data: EncodedData, method: str) -> tuple[PopularList, list[dict[str, Any]]]:
    """The list a benchmark method names (`METHODS`) and, for the segment list, what choosing
    it on validation tried."""
    if method == "popularity":
        return overall(data), []
    if method == "popularity-segment":
        return choose_segment(data)
    raise ValueError(f"unknown list {method!r}; choose from {METHODS}")


def report(
    data: EncodedData, tcfg: TrainConfig, popular: PopularList, tried: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`evaluation.full_report`'s metrics for a popular list (no model); a segment list is recorded
    under "segment" with the choices `tried`."""
    out: dict[str, Any] = {"task": task_record(tcfg), "ranking": {}}
    for name, part in (("test", TEST), ("val", VAL)):
        ev = part_pairs(data, part, tcfg)
        scores = popular.table[popular.segment_of[data.user[ev.rows]], ev.items - 1]
        out[name] = metrics.by_group(data.user[ev.rows], ev.labels, scores, data.is_new[ev.rows])
        out["ranking"][name] = rank(data, popular, data.ranking[part])
    if popular.field is not None:
        out["segment"] = {"field": popular.field, "shrink": popular.shrink, "tried": tried or []}
    return {**out, "train_seconds": 0.0, "best_epoch": 0, "epochs": []}


def log_prior(data: EncodedData, field: str = "", shrink: float = 0.0) -> FloatArray:
    """A ranker's fixed prior (`RankerConfig.item_prior`), (S, I+1): for each segment (the ids of
    the single-slot user attribute `field`; one row for the overall list when `field` is ""), the
    log of its items' liked share in training, (c_s(i) + shrink * p(i)) / (n_s + shrink), with
    p(i) the add-one smoothed overall share (so no share is 0), centred per row; column 0 (PAD)
    is 0. A segment id no training user has gets the overall list."""
    n_items = len(data.catalog)
    counts = data.item_counts[1:].astype(np.float64)
    share = (counts + 1.0) / (counts.sum() + n_items)
    if not field:
        rows = share[None, :]
    else:
        slot, cardinality = segment_slot(data.schema, field)
        rows, n = _shrunk_shares(data, data.user_attrs[:, slot].astype(np.int64), cardinality, shrink, share)
        rows[n == 0] = share  # also with shrink 0
    log_rows = np.log(rows)
    log_rows -= log_rows.mean(1, keepdims=True)
    return np.concatenate([np.zeros((len(log_rows), 1)), log_rows], 1)
