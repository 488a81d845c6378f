"""The catalog task: what the service does, rank the whole catalog for a user.

* Training (`training_rows`): positives are the items a user chose (MovieLens: rated >= 4, or any
  rating); negatives are catalog items the user never interacted with in training, drawn afresh
  each epoch (by popularity^0.75, or uniformly), `negatives` per positive. A negative shares its
  positive's user, context and behavior: the same moment, another item. Under the sampled softmax
  (the default) a positive and its negatives are one row, scored together; under binary
  cross-entropy each is a row of its own, and rated-but-not-liked items can be kept as negatives
  too. The rating task (the paper's comparison) trains on the rated rows and their labels only.
* New-user rows (`cold_rows`): a share of training rows is shown as a new user looks (user id out
  of vocabulary, no behavior), so a user never seen is a case the towers learned.
* Evaluation: for each user with held-out positives in a part (VAL or TEST), every catalog item is
  scored at the moment of the user's first held-out interaction, and HR@10, precision@10,
  NDCG@10 and Recall@50 are computed against the user's held-out positives (`ranking_metrics`).
  Old users' earlier interactions (training and, for TEST, validation) are not ranked; a new user
  has none the system knows. AUC, GAUC and log loss are computed on a fixed sample of negatives:
  `EVAL_NEGATIVES` items the user never interacted with per held-out positive (`EvalSet`), drawn
  with the split's seed and written into split.json with raw ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.contract import OOV, IntArray, Schema

TASKS = ("catalog", "rating")
POSITIVES = ("liked", "any")
SAMPLING = ("uniform", "popularity")
EVAL_NEGATIVES = 10  # sampled negatives per held-out positive for AUC (fixed, recorded)
TOP_K = 10
RECALL_K = 50
MAX_SCORES_PER_CALL = 60_000  # candidate rows scored in one call of a catalog scorer

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def user_field_slots(schema: Schema, name: str) -> slice:
    """Columns of the user attribute `name` in the user attribute ids."""
    slots = schema.user_field_slots(name)
    if slots is not None:
        return slots
    raise ValueError(f"no user field {name!r}; the schema has {[f.name for f in schema.user_fields]}")


def user_id_slot(schema: Schema) -> int:
    """Column of the user id in the user attribute ids."""
    slot = schema.user_id_slot
    if slot is None:
        raise ValueError("the schema has no user_id field")
    return slot


def as_new_user(attrs: IntArray, behavior: IntArray, rows: BoolArray, id_slot: int) -> None:
    """In place: the selected rows look as a new user does (user id OOV, empty behavior)."""
    attrs[rows, id_slot] = OOV
    behavior[rows] = 0


@dataclass(frozen=True)
class EvalSet:
    """Scored pairs: encoded row (user, context, behavior), target catalog row, label."""

    rows: IntArray
    items: IntArray
    labels: npt.NDArray[np.float32]


@dataclass(frozen=True)
class RankingSet:
    """Whole-catalog ranking cases for one part: one per user with held-out positives."""

    rows: IntArray  # (U,) the encoded row whose user, context and behavior score the catalog
    positives: list[IntArray]  # catalog rows the user chose and liked in the part
    exclude: list[IntArray]  # catalog rows not ranked for the user (interactions known before)
    is_new: BoolArray  # (U,)


def keys(user: IntArray, item: IntArray, n_items: int) -> npt.NDArray[np.int64]:
    return user.astype(np.int64) * (n_items + 1) + item.astype(np.int64)


class NegativeSampler:
    """Catalog rows 1..I that a user never interacted with, by rejection against known pairs."""

    def __init__(self, known: npt.NDArray[np.int64], n_items: int, weights: FloatArray | None = None) -> None:
        self.known = np.unique(known)
        self.n_items = n_items
        self.p = None if weights is None else weights / weights.sum()  # over rows 1..I

    def draw(self, users: IntArray, rng: np.random.Generator) -> IntArray:
        """An item per user; a known one is redrawn (up to 50 times: only a user who knows nearly
        every item could keep one)."""
        items = self._draw(len(users), rng)
        for _ in range(50):  # each redraw removes most collisions (a user knows a few % of items)
            hit = np.flatnonzero(self._known(users, items))
            if len(hit) == 0:
                break
            items[hit] = self._draw(len(hit), rng)
        return items

    def _draw(self, n: int, rng: np.random.Generator) -> IntArray:
        if self.p is None:
            return rng.integers(1, self.n_items + 1, n).astype(np.int64)
        return (rng.choice(self.n_items, n, p=self.p) + 1).astype(np.int64)

    def _known(self, users: IntArray, items: IntArray) -> BoolArray:
        k = keys(users, items, self.n_items)
        pos = np.searchsorted(self.known, k).clip(max=max(len(self.known) - 1, 0))
        return self.known[pos] == k if len(self.known) else np.zeros(len(k), bool)


def eval_set(
    positives: IntArray,
    user: IntArray,
    item: IntArray,
    sampler: NegativeSampler,
    seed: int,
    n: int = EVAL_NEGATIVES,
) -> EvalSet:
    """Each positive row and `n` sampled never-interacted items scored in its place."""
    rng = np.random.default_rng([seed, 7919])
    neg_rows = np.repeat(positives, n)
    neg_items = sampler.draw(user[neg_rows], rng)
    return EvalSet(
        rows=np.r_[positives, neg_rows].astype(np.int64),
        items=np.r_[item[positives], neg_items].astype(np.int64),
        labels=np.r_[np.ones(len(positives)), np.zeros(len(neg_rows))].astype(np.float32),
    )


def popularity_weights(counts: IntArray, power: float = 0.75) -> FloatArray:
    """Sampling weights over rows 1..I from training counts (row 0, PAD, dropped); +1 smoothing."""
    return (counts[1:].astype(np.float64) + 1.0) ** power


# --- whole-catalog ranking metrics ---------------------------------------------------------------

CatalogScorer = Callable[[IntArray], npt.NDArray[np.floating]]  # case indices (B,) -> (B, I) scores


def ranking_metrics(
    cases: RankingSet,
    score: CatalogScorer,
    n_items: int,
    tie_rank: IntArray,
    groups: Mapping[str, BoolArray] | None = None,
) -> dict[str, dict[str, float | int]]:
    """HR@10, precision@10, NDCG@10, Recall@50 by group (new, old, all, and any of `groups`: a
    name and a mask over the cases), one value per user.

    `score(idx)` returns the scores of catalog rows 1..I for cases `idx`; ties are broken by
    `tie_rank` (rank of each row's raw id, rows 1..I), as the service breaks them.
    """
    per_user = np.zeros((len(cases.rows), 4))
    chunk = max(1, MAX_SCORES_PER_CALL // max(n_items, 1))
    by_id = np.argsort(tie_rank, kind="stable")  # column order: raw id order
    for start in range(0, len(cases.rows), chunk):
        idx = np.arange(start, min(start + chunk, len(cases.rows)))
        scores = np.asarray(score(idx), np.float64)  # (B, I), column j = catalog row j + 1
        for b, case in enumerate(idx):
            s = scores[b].copy()
            excluded = cases.exclude[case]
            if len(excluded):
                s[excluded - 1] = -np.inf
            ordered = by_id[np.argsort(-s[by_id], kind="stable")][:RECALL_K] + 1  # catalog rows
            per_user[case] = _user_metrics(ordered, cases.positives[case])
    names = ("hr@10", "precision@10", "ndcg@10", "recall@50")
    out: dict[str, dict[str, float | int]] = {}
    for group, mask in (
        ("new", cases.is_new),
        ("old", ~cases.is_new),
        ("all", np.ones(len(cases.is_new), bool)),
        *(groups or {}).items(),
    ):
        values = per_user[mask]
        out[group] = {
            name: float(values[:, i].mean()) if len(values) else float("nan") for i, name in enumerate(names)
        }
        out[group]["users"] = int(mask.sum())
    return out


def _user_metrics(ordered: IntArray, positives: IntArray) -> tuple[float, float, float, float]:
    hit = np.isin(ordered, positives)
    top = hit[:TOP_K]
    gains = 1.0 / np.log2(np.arange(2, TOP_K + 2))
    ideal = gains[: min(len(positives), TOP_K)].sum()
    ndcg = float((top * gains[: len(top)]).sum() / ideal) if ideal > 0 else 0.0
    return float(top.any()), float(top.sum() / TOP_K), ndcg, float(hit.sum() / len(positives))
