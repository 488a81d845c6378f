"""AUC, GAUC and log loss against values worked out by hand (scikit-learn is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export import metrics


def test_auc_counts_each_positive_negative_pair_and_ties_half() -> None:
    labels = [1, 1, 0, 0, 1, 0]
    scores = [0.8, 0.4, 0.4, 0.2, 0.9, 0.7]
    # positives 0.8, 0.4, 0.9 against negatives 0.4, 0.2, 0.7:
    # 0.8 beats all three (3), 0.4 ties 0.4 and beats 0.2 (1.5), 0.9 beats all three (3): 7.5 / 9
    assert metrics.auc(labels, scores) == pytest.approx(7.5 / 9)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([0.9, 0.8, 0.2, 0.1], 1.0),  # every positive above every negative
        ([0.1, 0.2, 0.8, 0.9], 0.0),
        ([0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
        ([0.9, 0.1, 0.9, 0.1], 0.5),  # each positive ties one negative, beats one, loses one
    ],
)
def test_auc_extremes(scores: list[float], expected: float) -> None:
    assert metrics.auc([1, 1, 0, 0], scores) == pytest.approx(expected)


def test_auc_is_undefined_without_both_labels() -> None:
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))
    assert math.isnan(metrics.auc([0, 0], [0.2, 0.3]))
    assert math.isnan(metrics.auc([], []))


def test_gauc_weights_each_users_auc_by_their_samples() -> None:
    # rows interleaved: GAUC groups by user whatever the order
    users = ["a", "b", "c", "b", "a", "c", "b"]
    labels = [1, 1, 1, 0, 0, 1, 0]
    scores = [0.9, 0.2, 0.3, 0.5, 0.1, 0.4, 0.2]
    # a: 0.9 over 0.1 -> AUC 1 on 2 samples; b: positive 0.2 loses to 0.5, ties 0.2 -> 0.25 on 3
    # samples; c: positives only, left out
    assert metrics.gauc(users, labels, scores) == pytest.approx((1.0 * 2 + 0.25 * 3) / 5)


def test_gauc_is_undefined_when_no_user_has_both_labels() -> None:
    assert math.isnan(metrics.gauc(["a", "b"], [1, 0], [0.3, 0.7]))


def test_logloss_is_the_mean_negative_log_likelihood() -> None:
    # -(ln 0.8 + ln 0.6) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.3669845, abs=1e-7)


def test_logloss_clips_certain_scores() -> None:
    assert metrics.logloss([1, 0], [1.0, 0.0]) == pytest.approx(1e-7, rel=1e-3)
    assert metrics.logloss([0], [1.0]) == pytest.approx(-math.log(1e-7))
    assert math.isnan(metrics.logloss([], []))


def test_by_group_splits_new_and_old_users() -> None:
    users = np.array(["n", "n", "o", "o"])
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.2, 0.8])
    out = metrics.by_group(users, labels, scores, np.array([True, True, False, False]))
    # all: positives 0.9 (beats 0.1 and 0.8) and 0.2 (beats 0.1) -> 3 / 4
    assert (out["new"]["auc"], out["old"]["auc"], out["all"]["auc"]) == (1.0, 0.0, 0.75)
    assert (out["new"]["samples"], out["old"]["samples"], out["all"]["samples"]) == (2, 2, 4)
