"""A prior read from an attribute that holds several values ("genres you like"): one list per
value, a user scored by the mean of their values' log lists, an empty answer by the overall list
(`popular.log_prior`, `popular.by_values`, `Ranker._bias`), through ONNX Runtime as in torch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export import data as datasets
from model_export import popular
from model_export.catalog import user_field_slots
from model_export.export import RankerGraph, _example_inputs, _export
from model_export.features import EncodedData, encode_data
from model_export.model import MailModel, ModelConfig, RankerConfig, UserInputs
from model_export.parity import cpu_session
from model_export.protocol import TRAIN, VAL, SplitConfig, make_split
from model_export.train import resolve_prior
from service.candidates import PriorStage
from service.contract import ranker_batch_signature, ranker_signature

BAG = "likes"


@pytest.fixture(scope="module")
def encoded() -> EncodedData:
    """Synthetic users (their "segment" sets their taste) who answered "what do you like?" with
    their segment and a segment drawn at random; every fifth user did not answer."""
    raw = datasets.make_synthetic(n_users=300, per_user=30, seed=0)
    rng = np.random.default_rng(0)
    segments = sorted({str(a["segment"]) for a in raw.users.values()})
    answers = {
        u: [str(a["segment"]), str(rng.choice(segments))]
        for i, (u, a) in enumerate(sorted(raw.users.items()))
        if i % 5
    }
    raw = raw.with_user_attribute(BAG, answers, datasets.plan(BAG, BAG, "tags", slots=3))
    return encode_data(raw, make_split(raw, SplitConfig(protocol="strict", seed=0)), 8, 1, 8)


def _bags(data: EncodedData) -> np.ndarray:
    return data.user_attrs[:, user_field_slots(data.schema, BAG)]


def _mean_rows(prior: np.ndarray, bag: np.ndarray) -> np.ndarray:
    values = [v for v in bag.tolist() if v > 0] or [0]  # no answer: row 0, the overall list
    return np.mean([prior[v] for v in values], axis=0)


def test_a_bag_prior_counts_a_user_in_each_of_their_values_lists(encoded: EncodedData) -> None:
    counts = encoded.item_counts[1:].astype(np.float64)
    share = (counts + 1) / (counts.sum() + len(counts))
    prior = popular.log_prior(encoded, BAG, shrink=50.0)
    bags = _bags(encoded)
    liked = (encoded.part == TRAIN) & (encoded.label == 1)
    answered = np.unique(bags[bags > 0])
    assert len(answered) > 1 and (bags[:, 1] > 0).any()  # several values, users with two
    for v in answered:  # by hand: the liked items of every user whose answer holds v
        mine = (bags[encoded.user[liked]] == v).any(1)
        c = np.bincount(encoded.item[liked][mine], minlength=len(counts) + 1)[1:]
        row = np.log((c + 50 * share) / (c.sum() + 50))
        np.testing.assert_allclose(prior[v, 1:], row - row.mean())
    overall = popular.log_prior(encoded)[0]
    np.testing.assert_allclose(prior[0], overall)  # PAD (no answer): the overall list
    lists = popular.by_values(encoded, BAG, shrink=50.0)
    assert lists.by_values and lists.field == BAG
    silent = np.flatnonzero((bags == 0).all(1))
    assert len(silent)
    for u in [*range(10), *silent[:3].tolist()]:
        np.testing.assert_allclose(lists.table[lists.segment_of[u]], _mean_rows(prior, bags[u])[1:])


def test_lists_try_a_bag_both_ways_and_a_prior_takes_it_as_an_answer_if_validation_does(
    encoded: EncodedData,
) -> None:
    _, tried = popular.choose_segment(encoded)
    _, for_prior = popular.choose_segment(encoded, prior=True)
    singles = sum(1 for f in encoded.schema.user_fields if f.name != "user_id" and f.slots == 1)
    n = len(popular.SHRINK)
    assert len(tried) == 1 + (singles + 2) * n and len(for_prior) == 1 + singles * n
    assert any(t.get("by_values") for t in tried) and all(t["field"] != BAG for t in for_prior)
    chosen, _ = popular.choose_segment(encoded, prior=True)
    answer, shrink, answers = popular.choose_answer(encoded, chosen.field or "", chosen.shrink)
    assert len(answers) == 1 + n and answers[0]["answer"] is None  # none, or the bag at each shrinkage
    best = max(answers, key=lambda t: t["val_ndcg@10_new"])
    assert (answer or None, shrink) == (best["answer"], best["shrink"])
    # the segment list a benchmark compares with: the best on validation of all those lists and
    # of the prior's (segment and answer)
    listed, every = popular.by_method(encoded, "popularity-segment")
    assert every[: len(tried)] == tried and len(every) == len(tried) + len(answers)
    best_list = max(every, key=lambda t: t["val_ndcg@10_new"])
    got = popular.rank(encoded, listed, encoded.ranking[VAL])["new"]["ndcg@10"]
    assert got == pytest.approx(best_list["val_ndcg@10_new"])
    cfg = ModelConfig(model="control", ranker=RankerConfig(item_prior=True, prior_segment="auto"))
    resolved = resolve_prior(encoded, cfg).ranker
    assert resolved is not None
    assert (resolved.prior_segment, resolved.prior_shrink) == (chosen.field or "", chosen.shrink)
    assert (resolved.prior_answer, resolved.prior_answer_shrink) == (answer, shrink)


@pytest.mark.parametrize("segment", ["segment", ""])
def test_a_segment_and_an_answer_add_up_in_the_ranker_as_in_their_list(
    encoded: EncodedData, segment: str
) -> None:
    """The ranker's prior for each user is `prior_list`'s score: the segment's row (or the
    overall one) plus the mean lift of the answer's values."""
    cfg = ModelConfig(
        model="control",
        ranker=RankerConfig(
            hidden=(16, 8),
            d_attention=8,
            item_prior=True,
            prior_segment=segment,
            prior_shrink=50.0,
            prior_answer=BAG,
            prior_answer_shrink=20.0,
        ),
    )
    model = MailModel(cfg, encoded.schema, torch.from_numpy(encoded.catalog.features)).eval()
    table = popular.log_prior(encoded, segment, 50.0, BAG, 20.0)
    model.ranker.set_item_prior(torch.from_numpy(table).float())
    lists = popular.prior_list(encoded, segment, 50.0, BAG, 20.0)
    bags = _bags(encoded)
    users = [int(np.flatnonzero((bags > 0).sum(1) == k)[0]) for k in (0, 1, 2)]
    items = torch.arange(1, len(encoded.catalog) + 1)
    attrs = torch.from_numpy(encoded.user_attrs[users])
    served = PriorStage(table, tuple(model.ranker.prior_blocks), 5)  # the service's reading of it
    for i, u in enumerate(users):
        got = model.ranker._bias(items, attrs[i : i + 1], None)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), lists.table[lists.segment_of[u]], atol=1e-5)
        np.testing.assert_allclose(served.scores(encoded.user_attrs[u]), got.numpy(), atol=1e-5)
    answered = popular.prior_list(encoded, segment, 50.0)  # without the answer: its rows are lifts
    lift = lists.table[lists.segment_of[users[2]]] - answered.table[answered.segment_of[users[2]]]
    assert np.abs(lift).max() > 0.1
    silent = lists.table[lists.segment_of[users[0]]] - answered.table[answered.segment_of[users[0]]]
    np.testing.assert_allclose(silent, 0.0, atol=1e-9)  # no answer: the segment's list alone


def _bag_model(data: EncodedData) -> MailModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="control",
        ranker=RankerConfig(
            hidden=(16, 8), d_attention=8, item_prior=True, prior_segment=BAG, prior_shrink=50.0
        ),
    )
    model = MailModel(cfg, data.schema, torch.from_numpy(data.catalog.features)).eval()
    model.ranker.set_item_prior(torch.from_numpy(popular.log_prior(data, BAG, 50.0)).float())
    return model


def test_the_ranker_adds_the_mean_of_the_users_values_rows_in_torch_and_onnx(
    encoded: EncodedData, tmp_path: Path
) -> None:
    model = _bag_model(encoded)
    prior = popular.log_prior(encoded, BAG, 50.0)  # each value's list; the ranker: overall + lift
    bags = _bags(encoded)
    users = [int(np.flatnonzero((bags > 0).sum(1) == k)[0]) for k in (0, 1, 2)]  # no, one, two values
    attrs = torch.from_numpy(encoded.user_attrs[users])
    items = torch.arange(1, len(encoded.catalog) + 1)
    want = np.stack([_mean_rows(prior, bags[u])[1:] for u in users])
    for i in range(len(users)):  # one user, broadcast over the targets
        got = model.ranker._bias(items, attrs[i : i + 1], None)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_allclose(got.numpy(), want[i], atol=1e-5)
    owner = torch.arange(len(users)).repeat_interleave(len(items))  # several users in one call
    got = model.ranker._bias(items.repeat(len(users)), attrs, owner)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want.reshape(-1), atol=1e-5)
    # exported as the bundle exports it: the same scores from ONNX Runtime
    served = copy.deepcopy(model)
    served.ranker.freeze_for_serving()
    schema = encoded.schema
    example = _example_inputs(schema)
    _export(RankerGraph(served), example, tmp_path / "r.onnx", ranker_signature(schema))
    batch_example = (
        *(t.repeat(2, *[1] * (t.dim() - 1)) for t in example[:5]),
        example[5],
        torch.tensor([0, 1, 1]),
    )
    _export(RankerGraph(served), batch_example, tmp_path / "b.onnx", ranker_batch_signature(schema))
    n = len(users)
    user = UserInputs(
        attrs,
        torch.ones(n, schema.context_slots, dtype=torch.long),
        torch.zeros(n, schema.behavior_len, dtype=torch.long),
        torch.zeros(n, schema.virtual_slots, schema.d_embed),
        torch.zeros(n, 1),
    )
    single, batch = cpu_session(tmp_path / "r.onnx"), cpu_session(tmp_path / "b.onnx")
    names = [i.name for i in single.get_inputs()]
    with torch.no_grad():
        expected = torch.sigmoid(model.ranker(user, items.repeat(n), owner)).numpy()
    for i in range(n):
        feed = [t[i : i + 1].numpy() for t in user] + [items.numpy()]
        (out,) = single.run(None, dict(zip(names, feed, strict=True)))
        np.testing.assert_allclose(out, expected[i * len(items) : (i + 1) * len(items)], atol=1e-5)
    feed = [t.numpy() for t in user] + [items.repeat(n).numpy(), owner.numpy()]
    (out,) = batch.run(None, dict(zip([i.name for i in batch.get_inputs()], feed, strict=True)))
    np.testing.assert_allclose(out, expected, atol=1e-5)
