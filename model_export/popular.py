"""The lists a user gets without a model: the items most liked in training, overall or within the
user's segment of one attribute, scored with the towers' metrics (whole catalog, sampled AUC).

Segment popularity is what an engineer would try before a model (the most liked films among users
of your age): each segment's liked counts, shrunk towards the overall list by `shrink`
pseudo-counts, the segment attribute and the shrinkage chosen on validation new users
(`choose_segment`). An attribute that holds a bag of values ("genres you like") gives two lists:
each distinct bag a segment (`by_segment`), or each value a segment and a user the mean of their
values' log lists (`by_values`: what a ranker's prior reads). It is the bar that says how much a
user's attributes alone can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from model_export import catalog as task
from model_export import metrics
from model_export.evaluation import part_pairs, task_record, tie_rank
from model_export.features import EncodedData
from model_export.model import segment_slots
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
    by_values: bool = False  # a bag attribute's values averaged (`by_values`), not its bags
    answer: str | None = None  # a bag attribute whose values' lifts are added (`prior_list`)
    answer_shrink: float = 0.0

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


def by_values(data: EncodedData, field: str, shrink: float) -> PopularList:
    """For a bag attribute `field`: each of its values a segment (`log_prior`'s rows), a user
    scored by the mean of their values' centred log shares; no value: the overall list. The
    list a ranker's prior with this segment ranks by (`prior_list`)."""
    return replace(prior_list(data, field, shrink), by_values=True)


def _shrunk_shares(
    data: EncodedData, segment_of: npt.NDArray[np.int64], n_segments: int, shrink: float, share: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(S, I) liked training shares per segment (`segment_of`: each user row's, (U,); or (U, k),
    a bag of segments per user, 0 for none), shrunk towards `share` by `shrink` pseudo-counts,
    and each segment's liked interactions (S,)."""
    liked = (data.part == TRAIN) & (data.label == 1)
    counts = np.zeros((n_segments, len(data.catalog)))
    if segment_of.ndim == 1:
        np.add.at(counts, (segment_of[data.user[liked]], data.item[liked] - 1), 1.0)
    else:  # a user's liked items count in each of their values' segments
        for column in segment_of.T:
            has = column[data.user[liked]] > 0
            np.add.at(counts, (column[data.user[liked]][has], data.item[liked][has] - 1), 1.0)
    n = counts.sum(1)
    return (counts + shrink * share) / (n[:, None] + shrink), n


def rank(data: EncodedData, popular: PopularList, cases: task.RankingSet) -> dict[str, Any]:
    """Whole-catalog ranking metrics of a popular list for `cases`."""
    return task.ranking_metrics(
        cases, lambda idx: popular.scores(data, cases.rows[idx]), len(data.catalog), tie_rank(data)
    )


def _validation(data: EncodedData) -> tuple[task.RankingSet, str]:
    """Validation's ranking cases and the key choices are compared by: NDCG@10 of new users (of
    all users where validation has no new user)."""
    cases = data.ranking[VAL]
    return cases, "new" if cases.is_new.any() else "all"


def choose_segment(data: EncodedData, prior: bool = False) -> tuple[PopularList, list[dict[str, Any]]]:
    """The segment attribute and shrinkage with the best validation NDCG@10 of new users (of all
    users where validation has no new user), the overall list among the choices; and what each
    choice scored. A bag attribute is tried both ways (`by_segment`, `by_values`); with `prior`,
    single-slot attributes only (a prior's segment; a bag joins it as an answer: `choose_answer`)."""
    cases, group = _validation(data)
    tried: list[dict[str, Any]] = []
    best: tuple[float, PopularList] | None = None
    choices = [overall(data)]
    for f in data.schema.user_fields:
        if f.name == "user_id":
            continue
        if f.slots > 1 and prior:
            continue
        ways = [by_segment] if f.slots == 1 else [by_segment, by_values]
        choices += [way(data, f.name, s) for way in ways for s in SHRINK]
    for popular in choices:
        ndcg = float(rank(data, popular, cases)[group]["ndcg@10"])
        choice = {"field": popular.field, "shrink": popular.shrink}
        if popular.by_values:
            choice["by_values"] = True
        tried.append({**choice, f"val_ndcg@10_{group}": ndcg})
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
        chosen, tried = choose_segment(data)
        if not any(f.slots > 1 and f.name != "user_id" for f in data.schema.user_fields):
            return chosen, tried
        # with a signup answer, also the list a ranker's prior would carry: segment and answer
        segment, _ = choose_segment(data, prior=True)
        answer, answer_shrink, answers = choose_answer(data, segment.field or "", segment.shrink)
        combined = prior_list(data, segment.field or "", segment.shrink, answer, answer_shrink)
        key = f"val_ndcg@10_{_validation(data)[1]}"
        with_answer = [
            {
                "field": segment.field,
                "shrink": segment.shrink,
                "answer": a["answer"],
                "answer_shrink": a["shrink"],
                key: a[key],
            }
            for a in answers
        ]
        tried = tried + with_answer
        best = max(tried, key=lambda t: t[key])
        return (combined if best in with_answer else chosen), tried
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
    if popular.field is not None or popular.answer:
        out["segment"] = {"field": popular.field, "shrink": popular.shrink, "tried": tried or []}
        if popular.by_values:
            out["segment"]["by_values"] = True
        if popular.answer:
            out["segment"] |= {"answer": popular.answer, "answer_shrink": popular.answer_shrink}
    return {**out, "train_seconds": 0.0, "best_epoch": 0, "epochs": []}


def prior_list(
    data: EncodedData, field: str = "", shrink: float = 0.0, answer: str = "", answer_shrink: float = 0.0
) -> PopularList:
    """The list a ranker's prior ranks each user by (`log_prior`'s rows, read as the ranker
    reads them): the segment's log shares, plus the mean log lift of the user's answer values."""
    table = log_prior(data, field, shrink, answer, answer_shrink)[:, 1:]
    blocks: list[tuple[npt.NDArray[np.int64], int, bool]] = []  # (ids (U, k), first row, bag)
    row = 0
    for name in [field, *([answer] if answer else [])]:
        if not name:  # no segment: the overall row for everyone
            blocks.append((np.zeros((len(data.user_attrs), 1), np.int64), 0, False))
            row = 1
            continue
        slots, cardinality = segment_slots(data.schema, name)
        ids = data.user_attrs[:, slots].astype(np.int64)
        blocks.append((ids, row, ids.shape[1] > 1))
        row += cardinality
    keys = np.concatenate([ids for ids, _, _ in blocks], 1)
    users, segment_of = np.unique(keys, axis=0, return_inverse=True)
    scores = np.zeros((len(users), table.shape[1]))
    start = 0
    for ids, first, bag in blocks:
        mine = users[:, start : start + ids.shape[1]]
        start += ids.shape[1]
        present = mine > 0 if bag else np.ones_like(mine, bool)
        present[:, 0] |= ~present.any(1)  # an empty bag: its PAD row, the block's overall row
        scores += (table[mine + first] * present[:, :, None]).sum(1) / present.sum(1, keepdims=True)
    return PopularList(
        scores,
        segment_of.reshape(-1).astype(np.int64),
        field or None,
        shrink,
        False,
        answer or None,
        answer_shrink,
    )


def choose_answer(data: EncodedData, field: str, shrink: float) -> tuple[str, float, list[dict[str, Any]]]:
    """Whether a signup answer (an attribute that holds several values) joins the prior of
    segment `field` (`shrink`), which one and its shrinkage: the best validation NDCG@10 of new
    users (of all users where validation has none) of `prior_list`, none among the choices."""
    cases, group = _validation(data)
    bags = [f.name for f in data.schema.user_fields if f.slots > 1 and f.name != "user_id"]
    best: tuple[float, str, float] | None = None
    tried: list[dict[str, Any]] = []
    for answer, answer_shrink in [("", 0.0), *((b, s) for b in bags for s in SHRINK)]:
        popular = prior_list(data, field, shrink, answer, answer_shrink)
        ndcg = float(rank(data, popular, cases)[group]["ndcg@10"])
        tried.append({"answer": answer or None, "shrink": answer_shrink, f"val_ndcg@10_{group}": ndcg})
        if best is None or ndcg > best[0]:
            best = (ndcg, answer, answer_shrink)
    assert best is not None
    return best[1], best[2], tried


def log_prior(
    data: EncodedData, field: str = "", shrink: float = 0.0, answer: str = "", answer_shrink: float = 0.0
) -> FloatArray:
    """A ranker's fixed prior (`RankerConfig.item_prior`), (S, I+1): for each segment (the ids of
    the user attribute `field`; one row for the overall list when `field` is ""), the log of its
    items' liked share in training, (c_s(i) + shrink * p(i)) / (n_s + shrink), with p(i) the
    add-one smoothed overall share (so no share is 0), centred per row; column 0 (PAD) is 0. A
    bag attribute's user counts in each of their values' rows. A segment id no training user has
    (PAD among them, for a bag) gets the overall list. With `answer` (an attribute, usually a bag
    of values: `RankerConfig.prior_answer`), its rows follow, each the log lift of that value's
    list (shrunk by `answer_shrink`) over the overall one; the overall row first when there is no
    segment. The ranker sums a user's rows across the two."""
    n_items = len(data.catalog)
    counts = data.item_counts[1:].astype(np.float64)
    share = (counts + 1.0) / (counts.sum() + n_items)
    if not field:
        rows = share[None, :]
    else:
        slots, cardinality = segment_slots(data.schema, field)
        ids = data.user_attrs[:, slots].astype(np.int64)
        rows, n = _shrunk_shares(data, ids[:, 0] if ids.shape[1] == 1 else ids, cardinality, shrink, share)
        rows[n == 0] = share  # also with shrink 0
    log_rows = np.log(rows)
    log_rows -= log_rows.mean(1, keepdims=True)
    out = np.concatenate([np.zeros((len(log_rows), 1)), log_rows], 1)
    if not answer:
        return out
    base = log_prior(data)
    return np.concatenate([out, log_prior(data, answer, answer_shrink) - base])
