"""Few-shot regime (beyond the paper): new users whose first n interactions are known.

`reveal` picks, for each new user, the first n interactions that behavior may use (clicks only,
under `clicks_only`) among those strictly before the user's first validation or test sample, so a
revealed interaction is never a test sample. They become that user's only behavior at
evaluation: one trained model is measured at every n, and the hard switch (virtual behavior only
for empty histories) can be compared with the count-based blend. Nothing here changes training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model_export.batches import Batches
from model_export.catalog import RankingSet
from model_export.data import Interactions
from model_export.evaluation import evaluate_rows
from model_export.features import EncodedData
from model_export.model import MailModel
from model_export.protocol import TEST, VAL, Split, behavior_mask, chronological_order, user_runs
from service.contract import IntArray

Revealed = dict[str, npt.NDArray[np.int64]]  # new user -> interaction indices, oldest first


def reveal(data: Interactions, split: Split, n: int, clicks_only: bool = False) -> Revealed:
    """Each new user's first `n` behavior interactions before their first VAL or TEST sample."""
    if data.timestamp is None:
        raise ValueError(f"{data.name} has no time: 'first n interactions' is undefined")
    ts = data.timestamp
    order = chronological_order(data, split.config.seed)
    order = order[np.isin(data.user[order], list(split.new_users))]
    users = data.user[order]
    may = behavior_mask(data, clicks_only)
    out: Revealed = {}
    for start, end in zip(*user_runs(users), strict=True):
        idx = order[start:end]
        held = np.isin(split.part[idx], (VAL, TEST))
        cutoff = ts[idx[held]].min() if held.any() else np.iinfo(np.int64).max
        ok = ~held & (ts[idx] < cutoff) & may[idx]
        out[str(users[start])] = idx[ok][:n].astype(np.int64)
    return out


def revealed_behavior(data: Interactions, encoded: EncodedData, revealed: Revealed) -> IntArray:
    """The behavior matrix the model is fed, with new users' rows = their revealed items only.

    A row sees the revealed items strictly before its own time, most recent first.
    """
    assert data.timestamp is not None
    out = encoded.model_behavior(fill_new_users=False).copy()
    length = out.shape[1]
    row_time = data.timestamp[encoded.source]
    for row in np.flatnonzero(encoded.is_new):
        idx = revealed.get(encoded.user_ids[encoded.user[row]])
        if idx is None or len(idx) == 0:
            continue
        idx = idx[data.timestamp[idx] < row_time[row]][::-1][:length]  # most recent first
        out[row, : len(idx)] = encoded.catalog.rows(data.item[idx].tolist())
    return out


def revealed_cases(
    cases: RankingSet, encoded: EncodedData, data: Interactions, revealed: Revealed
) -> RankingSet:
    """The whole-catalog cases with each new user's revealed items known: not ranked, no longer
    positives; new users only (old users are unaffected), and only those with positives left."""
    keep, positives, exclude = [], [], []
    for i in np.flatnonzero(cases.is_new).tolist():
        idx = revealed.get(encoded.user_ids[encoded.user[cases.rows[i]]])
        seen = (
            encoded.catalog.rows(data.item[idx].tolist())
            if idx is not None and len(idx)
            else cases.exclude[i][:0]
        )
        left = np.setdiff1d(cases.positives[i], seen)
        if len(left):
            keep.append(i)
            positives.append(left)
            exclude.append(np.union1d(cases.exclude[i], seen))
    rows = cases.rows[keep]
    return RankingSet(rows, positives, exclude, np.ones(len(rows), bool))


def evaluate_revealed(
    model: MailModel, encoded: EncodedData, behavior: IntArray, rows: npt.NDArray[np.int64]
) -> dict[str, Any]:
    """Metrics by user group on `rows`, the model fed `behavior` (from `revealed_behavior`)."""
    batches = Batches(encoded, fill_new_users=False)
    batches.behavior = torch.from_numpy(behavior)
    return evaluate_rows(model, batches, rows)
