"""Offline metrics: AUC, GAUC (per-user AUC weighted by impressions) and log loss."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model_export.protocol import user_runs

Array = npt.ArrayLike


def auc(labels: Array, scores: Array) -> float:
    """Area under the ROC curve with tied scores counted half; nan without both labels."""
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(users: Array, labels: Array, scores: Array) -> float:
    """Impression-weighted mean of per-user AUC over users with both labels."""
    users = np.asarray(users)
    y = np.asarray(labels)
    s = np.asarray(scores)
    order = np.argsort(users, kind="mergesort")
    total = weight = 0.0
    for a, b in zip(*user_runs(users[order]), strict=True):
        idx = order[a:b]
        value = auc(y[idx], s[idx])
        if not np.isnan(value):
            total += value * len(idx)
            weight += len(idx)
    return total / weight if weight else float("nan")


def logloss(labels: Array, scores: Array, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def summary(users: Array, labels: Array, scores: Array) -> dict[str, float | int]:
    return {
        "auc": auc(labels, scores),
        "gauc": gauc(users, labels, scores),
        "logloss": logloss(labels, scores),
        "samples": int(len(np.asarray(labels))),
    }


def by_group(
    users: Array, labels: Array, scores: Array, is_new: npt.NDArray[np.bool_]
) -> dict[str, dict[str, float | int]]:
    """Metrics for new users, old users and all."""
    users, labels, scores = np.asarray(users), np.asarray(labels), np.asarray(scores)
    return {
        "new": summary(users[is_new], labels[is_new], scores[is_new]),
        "old": summary(users[~is_new], labels[~is_new], scores[~is_new]),
        "all": summary(users, labels, scores),
    }
