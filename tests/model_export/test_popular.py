"""Popular lists without a model: overall and by segment, the segment chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from model_export import data as datasets
from model_export import popular
from model_export.features import EncodedData, encode_data
from model_export.model import ModelConfig, RankerConfig
from model_export.protocol import TRAIN, VAL, SplitConfig, make_split
from model_export.train import TrainConfig, resolve_prior


@pytest.fixture(scope="module")
def encoded() -> EncodedData:
    raw = datasets.make_synthetic(n_users=300, per_user=30, seed=0)
    split = make_split(raw, SplitConfig(protocol="strict", seed=0))
    return encode_data(raw, split, behavior_len=8, virtual_slots=1, d_embed=8)


def _field(data: EncodedData) -> str:
    return next(f.name for f in data.schema.user_fields if f.name != "user_id" and f.slots == 1)


def test_overall_list_is_the_training_liked_counts_for_everyone(encoded: EncodedData) -> None:
    rows = np.flatnonzero(encoded.part == VAL)[:5]
    scores = popular.overall(encoded).scores(encoded, rows)
    assert scores.shape == (5, len(encoded.catalog))
    np.testing.assert_array_equal(scores, np.tile(encoded.item_counts[1:], (5, 1)))


def test_segment_counts_are_the_segment_liked_counts_shrunk_towards_the_overall_share(
    encoded: EncodedData,
) -> None:
    field = _field(encoded)
    slot = [f.name for f in encoded.schema.user_fields].index(field)  # single-slot fields before it
    raw = popular.by_segment(encoded, field, shrink=0.0)
    liked = (encoded.part == TRAIN) & (encoded.label == 1)
    value = encoded.user_attrs[encoded.user[liked], slot]
    for v in np.unique(value)[:3]:  # by hand: liked counts of users with this value, as shares
        counts = np.bincount(encoded.item[liked][value == v], minlength=len(encoded.catalog) + 1)[1:]
        user = int(np.flatnonzero(encoded.user_attrs[:, slot] == v)[0])
        np.testing.assert_allclose(raw.table[raw.segment_of[user]], counts / counts.sum())
    share = encoded.item_counts[1:] / encoded.item_counts.sum()
    flat = popular.by_segment(encoded, field, shrink=1e12)  # infinite shrinkage: the overall list
    np.testing.assert_allclose(flat.table, np.tile(share, (len(flat.table), 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="no user field"):
        popular.by_segment(encoded, "shoe size", 1.0)


def test_the_segment_is_chosen_on_validation_and_recorded(encoded: EncodedData) -> None:
    """The synthetic users' "segment" attribute sets their taste: validation finds it."""
    chosen, tried = popular.choose_segment(encoded)
    assert chosen.field == "segment"
    fields = [f.name for f in encoded.schema.user_fields if f.name != "user_id"]
    assert len(tried) == 1 + len(fields) * len(popular.SHRINK)
    best = max(tried, key=lambda t: t["val_ndcg@10_new"])
    assert (chosen.field, chosen.shrink) == (best["field"], best["shrink"])
    report = popular.report(encoded, TrainConfig(task="catalog"), chosen, tried)
    assert set(report["ranking"]) == {"test", "val"} and report["best_epoch"] == 0
    assert report["ranking"]["val"]["new"]["ndcg@10"] == pytest.approx(best["val_ndcg@10_new"])
    assert report["segment"] == {"field": chosen.field, "shrink": chosen.shrink, "tried": tried}


def test_log_prior_is_the_centred_log_share_overall_and_by_segment(encoded: EncodedData) -> None:
    counts = encoded.item_counts[1:].astype(np.float64)
    share = (counts + 1) / (counts.sum() + len(counts))  # add-one smoothed: no share is 0
    overall_prior = popular.log_prior(encoded)
    assert overall_prior.shape == (1, len(counts) + 1) and overall_prior[0, 0] == 0
    np.testing.assert_allclose(overall_prior[0, 1:], np.log(share) - np.log(share).mean())
    prior = popular.log_prior(encoded, "segment", shrink=50.0)
    slot = [f.name for f in encoded.schema.user_fields].index("segment")  # single-slot fields before it
    liked = (encoded.part == TRAIN) & (encoded.label == 1)
    seg = encoded.user_attrs[encoded.user[liked], slot]
    for v in np.unique(seg):  # by hand, for each segment a training user has
        c = np.bincount(encoded.item[liked][seg == v], minlength=len(counts) + 1)[1:]
        row = np.log((c + 50 * share) / (c.sum() + 50))
        np.testing.assert_allclose(prior[v, 1:], row - row.mean())
    unseen = np.setdiff1d(np.arange(len(prior)), seg)  # PAD, OOV: the overall list
    np.testing.assert_allclose(prior[unseen, 1:], np.tile(overall_prior[0, 1:], (len(unseen), 1)))
    assert (prior[:, 0] == 0).all()


def test_an_auto_prior_takes_the_segment_validation_chooses(encoded: EncodedData) -> None:
    cfg = ModelConfig(model="control", ranker=RankerConfig(item_prior=True, prior_segment="auto"))
    resolved = resolve_prior(encoded, cfg).ranker
    chosen, _ = popular.choose_segment(encoded, prior=True)
    assert resolved is not None and (resolved.prior_segment, resolved.prior_shrink) == (
        chosen.field,
        chosen.shrink,
    )
    assert resolved.prior_segment == "segment"  # the synthetic attribute that sets taste
    plain = ModelConfig(model="control", ranker=RankerConfig(item_prior=True))
    assert resolve_prior(encoded, plain) is plain


def test_a_benchmark_method_names_its_list(encoded: EncodedData) -> None:
    plain, tried = popular.by_method(encoded, "popularity")
    assert plain.field is None and tried == []
    np.testing.assert_array_equal(plain.table, popular.overall(encoded).table)
    segment, tried = popular.by_method(encoded, "popularity-segment")
    chosen, tried_there = popular.choose_segment(encoded)
    assert (segment.field, segment.shrink, tried) == (chosen.field, chosen.shrink, tried_there)
    with pytest.raises(ValueError, match="unknown list"):
        popular.by_method(encoded, "control")
