"""The catalog task: ranking metrics by hand, negatives never known items, cases and their rules."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch

from model_export import catalog as task
from model_export import data as datasets
from model_export.features import encode_data
from model_export.protocol import TEST, TRAIN, VAL, SplitConfig, make_split
from model_export.train import COLD_CLICKS, ColdRows, TrainConfig, make_sampler, training_rows
from service.contract import OOV, PAD


def _cases(positives: list[list[int]], exclude: list[list[int]] | None = None) -> task.RankingSet:
    n = len(positives)
    return task.RankingSet(
        rows=np.arange(n, dtype=np.int64),
        positives=[np.array(p, np.int64) for p in positives],
        exclude=[np.array(e, np.int64) for e in (exclude or [[]] * n)],
        is_new=np.array([i % 2 == 0 for i in range(n)]),
    )


def test_ranking_metrics_match_hand_computed_values() -> None:
    n_items = 60
    scores = np.arange(n_items, 0, -1, dtype=np.float64)  # row 1 best, row 60 worst
    cases = _cases([[1, 3, 12], [59, 60]], exclude=[[2], []])
    out = task.ranking_metrics(cases, lambda idx: np.tile(scores, (len(idx), 1)), n_items, np.arange(n_items))
    # user 0: row 2 not ranked, so the top 10 is rows 1, 3..11: hits at ranks 1 and 2
    gains = 1 / np.log2(np.arange(2, 12))
    assert out["new"]["ndcg@10"] == pytest.approx((gains[0] + gains[1]) / gains[:3].sum())
    assert out["new"]["precision@10"] == pytest.approx(0.2)
    assert out["new"]["hr@10"] == 1.0
    assert out["new"]["recall@50"] == pytest.approx(1.0)  # row 12 is 11th: within 50
    # user 1: rows 59 and 60 are last of 60: no hit in the top 50
    assert out["old"] == {"hr@10": 0.0, "precision@10": 0.0, "ndcg@10": 0.0, "recall@50": 0.0, "users": 1}
    assert out["all"]["ndcg@10"] == pytest.approx(out["new"]["ndcg@10"] / 2)
    # a group of one's own: a mask over the cases, averaged the same way
    both = task.ranking_metrics(
        cases,
        lambda idx: np.tile(scores, (len(idx), 1)),
        n_items,
        np.arange(n_items),
        {"second": np.array([False, True]), "both": np.array([True, True])},
    )
    assert both["second"] == out["old"] and both["both"] == out["all"]
    assert {k: both[k] for k in ("new", "old", "all")} == out


def test_ties_are_broken_by_the_raw_id_order_given() -> None:
    n_items = 20
    flat = np.zeros(n_items)
    cases = _cases([[20]])
    first = np.arange(n_items)[::-1].copy()  # row 20 ranks first among equals
    last = np.arange(n_items)
    got_first = task.ranking_metrics(cases, lambda idx: np.tile(flat, (len(idx), 1)), n_items, first)
    got_last = task.ranking_metrics(cases, lambda idx: np.tile(flat, (len(idx), 1)), n_items, last)
    assert got_first["new"]["ndcg@10"] == 1.0 and got_last["new"]["hr@10"] == 0.0


def test_negative_sampler_never_draws_a_known_item() -> None:
    rng = np.random.default_rng(0)
    n_items = 30
    users = rng.integers(0, 20, 200)  # each user knows about a third of the items
    items = rng.integers(1, n_items + 1, 200)
    sampler = task.NegativeSampler(task.keys(users, items, n_items), n_items)
    known = set(zip(users.tolist(), items.tolist(), strict=True))
    for weights in (None, task.popularity_weights(np.arange(n_items + 1))):
        sampler.p = None if weights is None else weights / weights.sum()
        ask = rng.integers(0, 20, 5000)
        drawn = sampler.draw(ask, rng)
        assert ((drawn >= 1) & (drawn <= n_items)).all()
        assert not any((u, i) in known for u, i in zip(ask.tolist(), drawn.tolist(), strict=True))


@pytest.fixture(scope="module")
def encoded():  # type: ignore[no-untyped-def]
    raw = datasets.make_synthetic(seed=0)
    split = make_split(raw, SplitConfig(protocol="strict", seed=0))
    return raw, split, encode_data(raw, split, behavior_len=8, d_embed=8)


@pytest.mark.parametrize("held", [VAL, TEST])
def test_cases_follow_the_rules_for_new_and_old_users(encoded, held: int) -> None:  # type: ignore[no-untyped-def]
    raw, split, enc = encoded
    cases = enc.ranking[held]
    row_of = {enc.user_ids[u]: u for u in range(len(enc.user_ids))}
    assert cases.is_new.any() and (~cases.is_new).any()
    for i in range(len(cases.rows)):
        user = enc.user_ids[enc.user[cases.rows[i]]]
        mine = raw.user == user
        liked = mine & (raw.label == 1)
        items = enc.catalog.rows(raw.item[liked].tolist())
        parts = split.part[liked]
        if user in split.new_users:
            assert cases.is_new[i]
            # a strict new user validates or tests, never both, and is held out whole: every liked
            # interaction is a positive (no known items), as a new user's first page is judged
            assert (user in split.val_new_users) == (held == VAL)
            assert not (mine & (split.part == (TEST if held == VAL else VAL))).any()
            assert set(cases.positives[i].tolist()) == set(items.tolist())
            assert len(cases.exclude[i]) == 0
        else:
            assert not cases.is_new[i]
            assert set(cases.positives[i].tolist()) == set(items[parts == held].tolist())
            seen = mine & np.isin(split.part, (TRAIN, VAL) if held == TEST else (TRAIN,))
            want_excl = set(enc.catalog.rows(raw.item[seen].tolist()).tolist()) - set(
                cases.positives[i].tolist()
            )
            assert set(cases.exclude[i].tolist()) == want_excl
        # scored at the user's first sample of the part
        rep = cases.rows[i]
        assert enc.part[rep] == held and enc.user[rep] == row_of[user]
        times = raw.timestamp[enc.source[(enc.user == enc.user[rep]) & (enc.part == held)]]
        assert raw.timestamp[enc.source[rep]] == times.min()


def test_training_rows_of_the_catalog_task(encoded) -> None:  # type: ignore[no-untyped-def]
    _, _, enc = encoded
    tcfg = TrainConfig(negatives=3, loss="bce", sampling="uniform")
    rows, items, labels = training_rows(enc, tcfg, make_sampler(enc, tcfg), np.random.default_rng(0))
    train = enc.rows(TRAIN)
    liked = train[enc.label[train] == 1]
    assert labels.sum() == len(liked) and len(rows) == 4 * len(liked)
    assert set(rows.tolist()) <= set(liked.tolist())  # negatives stand in a positive's place
    known = set(task.keys(enc.user[train], enc.item[train], len(enc.catalog)).tolist())
    negatives = task.keys(enc.user[rows[labels == 0]], items[labels == 0], len(enc.catalog))
    assert not known & set(negatives.tolist())
    again = training_rows(enc, tcfg, make_sampler(enc, tcfg), np.random.default_rng(1))[1]
    assert not np.array_equal(again, items)  # afresh each epoch
    rating = TrainConfig(task="rating")
    r_rows, r_items, r_labels = training_rows(enc, rating, None, np.random.default_rng(0))
    assert np.array_equal(r_rows, train) and np.array_equal(r_labels, enc.label[train])
    assert TrainConfig().cold_share == 0.2 and rating.cold_share == 0.0
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(task="clicks")


def test_sampled_evaluation_negatives_were_never_interacted(encoded) -> None:  # type: ignore[no-untyped-def]
    raw, _, enc = encoded
    ev = enc.sampled_eval[TEST]
    n_pos = int(ev.labels.sum())
    assert len(ev.labels) == n_pos * (1 + task.EVAL_NEGATIVES)
    ever = set(zip(raw.user.tolist(), raw.item.tolist(), strict=True))
    users = [enc.user_ids[u] for u in enc.user[ev.rows[n_pos:]]]
    items = [enc.catalog.ids[r - 1] for r in ev.items[n_pos:]]
    assert not any(pair in ever for pair in zip(users, items, strict=True))
    assert math.isclose(float(ev.labels[:n_pos].mean()), 1.0)


def test_cold_rows_hide_id_behavior_and_some_attributes_of_the_picked_rows_only(encoded) -> None:  # type: ignore[no-untyped-def]
    _, _, enc = encoded
    n = 2000
    attrs = torch.from_numpy(enc.user_attrs[enc.user[enc.rows(TRAIN)][:n]].copy())
    beh = torch.randint(1, 5, (n, 8))
    batch = (attrs, torch.zeros(n, 1), beh, torch.ones(n), torch.ones(n), torch.zeros(n))
    id_slot = task.user_id_slot(enc.schema)
    others = [f.name for f in enc.schema.user_fields if f.name != "user_id"]
    assert others and (attrs[:, id_slot] > OOV).all() and (attrs > PAD).all()
    got, _, got_beh, *_ = ColdRows.for_schema(enc.schema, 0.5, 0.5)(batch, np.random.default_rng(0))
    cold = got[:, id_slot] == OOV
    assert 0.4 < cold.float().mean() < 0.6
    assert (got_beh[cold] == 0).all() and torch.equal(got_beh[~cold], beh[~cold])
    assert torch.equal(got[~cold], attrs[~cold])  # warm rows untouched
    for name in others:
        cols = task.user_field_slots(enc.schema, name)
        hidden = (got[:, cols] == PAD).all(1)
        assert not hidden[~cold].any() and 0.35 < hidden[cold].float().mean() < 0.65
        kept = cold & ~hidden
        assert torch.equal(got[kept][:, cols], attrs[kept][:, cols])
    # no attribute dropout: the cold rows keep every attribute but the id
    got, *_ = ColdRows.for_schema(enc.schema, 1.0, 0.0)(batch, np.random.default_rng(0))
    assert (got[:, id_slot] == OOV).all()
    keep = [c for c in range(attrs.shape[1]) if c != id_slot]
    assert torch.equal(got[:, keep], attrs[:, keep])
    # half the cold rows keep their n most recent items (the first n columns), n in 1..10
    got, _, got_beh, *_ = ColdRows.for_schema(enc.schema, 1.0, 0.0, 0.5)(batch, np.random.default_rng(0))
    assert (got[:, id_slot] == OOV).all()
    kept = (got_beh > 0).sum(1)
    assert 0.4 < (kept > 0).float().mean() < 0.6 and set(kept.tolist()) == set(range(beh.shape[1] + 1))
    for row, n in enumerate(kept.tolist()):
        assert torch.equal(got_beh[row, :n], beh[row, :n]) and (got_beh[row, n:] == 0).all()


def test_softmax_rows_put_each_positive_first_then_its_own_sampled_items(encoded) -> None:  # type: ignore[no-untyped-def]
    _, _, enc = encoded
    tcfg = TrainConfig(loss="softmax", negatives=5, sampling="popularity")
    rows, items, labels = training_rows(enc, tcfg, make_sampler(enc, tcfg), np.random.default_rng(0))
    train = enc.rows(TRAIN)
    liked = train[enc.label[train] == 1]
    assert np.array_equal(rows, liked) and items.shape == (len(liked), 6) and (labels == 1).all()
    assert np.array_equal(items[:, 0], enc.item[liked])
    known = set(task.keys(enc.user[train], enc.item[train], len(enc.catalog)).tolist())
    sampled = task.keys(np.repeat(enc.user[rows], 5), items[:, 1:].reshape(-1), len(enc.catalog))
    assert not known & set(sampled.tolist())
    for bad in ({"negatives": 0}, {"rated_negatives": True}):
        with pytest.raises(ValueError, match="loss softmax"):
            TrainConfig(loss="softmax", **bad)
    assert TrainConfig().softmax and not TrainConfig(task="rating").softmax  # the rating task: BCE


def test_sampled_softmax_is_the_cross_entropy_of_corrected_logits_scored_row_by_row(encoded) -> None:  # type: ignore[no-untyped-def]
    from model_export.batches import Batches, user_inputs
    from model_export.model import MailModel, ModelConfig, RankerConfig
    from model_export.train import row_losses, sampling_log_probability

    _, _, enc = encoded
    torch.manual_seed(0)
    cfg = ModelConfig(model="control", ranker=RankerConfig(hidden=(16, 8), d_attention=8))
    model = MailModel(cfg, enc.schema, torch.from_numpy(enc.catalog.features)).eval()
    tcfg = TrainConfig(loss="softmax", negatives=4, sampling="popularity")
    sampler = make_sampler(enc, tcfg)
    rows, items, labels = training_rows(enc, tcfg, sampler, np.random.default_rng(0))
    attrs, ctx, beh, item, label, _ = next(
        Batches(enc, False).iterate(rows[:8], 8, None, items[:8], labels[:8])
    )
    log_q = sampling_log_probability(sampler)
    assert sampler is not None and sampler.p is not None
    assert torch.allclose(log_q[1:].exp().sum(), torch.tensor(1.0)) and torch.isclose(
        log_q[5], torch.tensor(float(np.log(sampler.p[4])))
    )
    with torch.no_grad():
        got = row_losses(model, user_inputs(model, attrs, ctx, beh, False), item, label, log_q).mean()
        want = []
        for b in range(8):  # each user alone against its own 1 + 4 items, in the plain formula
            one = user_inputs(model, attrs[b : b + 1], ctx[b : b + 1], beh[b : b + 1], False)
            z = model.ranker(one, item[b]) - log_q[item[b]]
            want.append(torch.logsumexp(z, 0) - z[0])
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-5)
    # uniform sampling: a constant correction, so the loss of the raw logits
    uniform = sampling_log_probability(make_sampler(enc, TrainConfig(sampling="uniform")))
    assert torch.allclose(uniform[1:], uniform[1:2].expand(len(uniform) - 1))


def test_known_ids_phase_moves_known_users_id_rows_and_nothing_a_new_user_is_served(encoded) -> None:  # type: ignore[no-untyped-def]
    from model_export.batches import Batches, user_inputs
    from model_export.model import MailModel, ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.train import _KnownIds, sampling_log_probability

    _, _, enc = encoded
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="mail",
        ranker=RankerConfig(hidden=(16, 8), d_attention=8),
        zero_shot=ZeroShotConfig(d_hidden=8, width=16, d_attention=8),
    )
    model = MailModel(cfg, enc.schema, torch.from_numpy(enc.catalog.features))
    tcfg = TrainConfig(loss="softmax", negatives=4, sampling="popularity")
    sampler = make_sampler(enc, tcfg)
    rows, items, labels = training_rows(enc, tcfg, sampler, np.random.default_rng(0))
    batches = Batches(enc, False)
    model.train()
    with torch.no_grad():  # batch norms' running statistics away from their initial values
        a, c, b, i, _, _ = next(batches.iterate(rows, 256, None, items, labels))
        model.ranker(
            user_inputs(model, a, c, b, True), i.reshape(-1), torch.arange(len(a)).repeat_interleave(5)
        )
    id_slot = task.user_id_slot(enc.schema)
    test = enc.rows(TEST)
    probe = np.r_[test[enc.is_new[test]][:20], test[~enc.is_new[test]][:20]]
    attrs, ctx, beh, item, _, _ = next(batches.iterate(probe, len(probe), None))
    cold_attrs, cold_beh = attrs.clone(), beh.clone()
    task.as_new_user(cold_attrs.numpy(), cold_beh.numpy(), np.ones(len(probe), bool), id_slot)
    clicks = cold_attrs.clone()  # id unknown, real clicks kept: a new user after a few clicks

    def scores() -> tuple[torch.Tensor, ...]:
        model.eval()
        with torch.no_grad():
            return tuple(
                model.ranker(user_inputs(model, u, ctx, h, False), item)
                for u, h in ((attrs, beh), (cold_attrs, cold_beh), (clicks, beh))
            )

    before_state = copy.deepcopy(model.state_dict())
    known, cold, few = scores()
    warm = _KnownIds(model, enc.schema, lr=0.05)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["emb.user.0.weight"]
    log_q = sampling_log_probability(sampler)
    model.eval()
    for batch in batches.iterate(rows[:1024], 256, np.random.default_rng(1), items[:1024], labels[:1024]):
        # a few rows as new users look: their OOV row must not move all the same
        task.as_new_user(batch[0].numpy(), batch[2].numpy(), np.arange(len(batch[0])) < 16, id_slot)
        warm.step(model, batch, log_q, tcfg.embed_l2)
    warm.release(model)
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    table, was = after["emb.user.0.weight"], before_state["emb.user.0.weight"]
    changed = {k for k in after if not torch.equal(after[k], before_state[k])}
    # the id table (under each module that shares it) and nothing else, not a batch norm's statistics
    assert changed == {k for k, v in after.items() if v.data_ptr() == table.data_ptr()} != set()
    assert torch.equal(table[:2], was[:2])  # PAD and OOV: every new user's row
    known2, cold2, few2 = scores()
    assert torch.equal(cold, cold2) and torch.equal(few, few2)
    assert not torch.allclose(known, known2)  # old users' scores did move
    with pytest.raises(ValueError, match="freeze_cold"):
        TrainConfig(task="rating", freeze_cold=True)
    with pytest.raises(ValueError, match="freeze_cold"):
        TrainConfig(select="auc", freeze_cold=True)


def _small_control(enc, **fields: Any):  # type: ignore[no-untyped-def]
    """A small control tower trained on `enc` with these TrainConfig fields, on one thread: two
    threads' float sums can land elsewhere under load, and the validation curve with them."""
    from model_export.model import ModelConfig, RankerConfig
    from model_export.train import train

    cfg = ModelConfig(model="control", ranker=RankerConfig(kind="base", hidden=(32, 16), item_prior=True))
    return train(enc, cfg, TrainConfig(lr=5e-3, batch_size=256, progress=False, threads=1, **fields))


def test_freeze_cold_serves_new_users_their_best_epoch(encoded) -> None:  # type: ignore[no-untyped-def]
    from model_export.batches import Batches
    from model_export.evaluation import rank_part

    _, _, enc = encoded
    model, history = _small_control(enc, epochs=5, patience=1, freeze_cold=True)
    phases = [e["phase"] for e in history.epochs]
    assert phases[0] == 1 and 2 in phases  # this seed's new users peak early: phase 2 runs
    cold = history.epochs[history.cold_epoch - 1]
    assert (
        history.cold_epoch
        == max((e for e in history.epochs if e["phase"] == 1), key=lambda e: e["val_ndcg_new"])["epoch"]
    )
    for e in history.epochs:
        if e["phase"] == 2:  # known users' ids moved; a new user's page did not
            assert e["val_ndcg_new"] == cold["val_ndcg_new"]
    assert history.best_epoch >= history.cold_epoch
    final = rank_part(model, Batches(enc, False), VAL)
    assert final["new"]["ndcg@10"] == pytest.approx(cold["val_ndcg_new"], abs=1e-12)


def test_cold_checkpoint_scores_unseen_users_with_their_best_epoch_and_no_one_else(encoded) -> None:  # type: ignore[no-untyped-def]
    from model_export.batches import Batches
    from model_export.evaluation import cold_model, rank_part, unseen

    _, _, enc = encoded
    model, history = _small_control(
        enc, epochs=6, patience=3, cold_checkpoint=True, cold_scale=1.0
    )  # as trained (the scale: its own test)
    epochs = history.epochs
    assert history.cold_epoch == max(epochs, key=lambda e: e["val_ndcg_new"])["epoch"]
    assert history.best_epoch == max(epochs, key=lambda e: e["val_ndcg_served"])["epoch"]  # the default
    assert history.cold_epoch != history.best_epoch  # this seed's new users peak elsewhere
    batches = Batches(enc, False)
    cold = cold_model(model, history)
    assert cold is not None
    served = rank_part(model, batches, VAL, cold=cold)
    one = rank_part(model, batches, VAL)
    at_cold, at_best = epochs[history.cold_epoch - 1], epochs[history.best_epoch - 1]
    assert served["new"]["ndcg@10"] == pytest.approx(at_cold["val_ndcg_new"], abs=1e-12)
    assert one["new"]["ndcg@10"] == pytest.approx(at_best["val_ndcg_new"], abs=1e-12)
    assert served["old"] == one["old"]  # a known user is scored by the weights kept for everyone
    # the rule: unknown id and no history; one click, or a known id, is no longer unseen
    slot = task.user_id_slot(enc.schema)
    attrs = torch.full((4, enc.schema.user_slots), OOV + 1, dtype=torch.long)
    attrs[:3, slot] = OOV
    beh = torch.zeros(4, enc.schema.behavior_len, dtype=torch.long)
    beh[1, 0] = 5
    beh[2, :] = PAD
    assert unseen(attrs, beh, slot).tolist() == [True, False, True, False]
    # with `cold_clicks` 2, an unknown id with one click is still the cold checkpoint's
    assert unseen(attrs, beh, slot, clicks=2).tolist() == [True, True, True, False]
    assert cold.clicks == history.cold_clicks == COLD_CLICKS  # the chosen default
    with pytest.raises(ValueError, match="cold_checkpoint"):
        TrainConfig(select="auc", cold_checkpoint=True)
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(cold_checkpoint=True, freeze_cold=True)
    with pytest.raises(ValueError, match="1 or more"):
        TrainConfig(cold_clicks=0)
    with pytest.raises(ValueError, match="needs one"):
        TrainConfig(cold_checkpoint=False, cold_clicks=3)


def test_ndcg_served_keeps_the_epoch_best_for_the_users_the_kept_weights_score(encoded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from model_export import train as train_module
    from model_export.batches import Batches
    from model_export.evaluation import cold_model, rank_part, served_cases

    _, _, enc = encoded
    batches = Batches(enc, False)
    cases = enc.ranking[VAL]
    # on the strict protocol a validation new user is unseen (no id, no history): the cold
    # checkpoint's; the kept weights score the known users, whatever the clicks threshold
    for clicks in (1, COLD_CLICKS):
        assert np.array_equal(served_cases(batches, cases, clicks), ~cases.is_new)
    model, history = _small_control(
        enc, epochs=6, patience=3, cold_checkpoint=True, cold_scale=1.0, select="ndcg-served"
    )
    epochs = history.epochs
    assert history.best_epoch == max(epochs, key=lambda e: e["val_ndcg_served"])["epoch"]
    assert history.cold_epoch == max(epochs, key=lambda e: e["val_ndcg_new"])["epoch"]
    final = rank_part(model, batches, VAL, cold=cold_model(model, history))
    assert final["old"]["ndcg@10"] == pytest.approx(
        epochs[history.best_epoch - 1]["val_ndcg_served"], abs=1e-12
    )
    assert final["new"]["ndcg@10"] == pytest.approx(epochs[history.cold_epoch - 1]["val_ndcg_new"], abs=1e-12)
    # the score read is the served group's alone: told that only five known users are served
    # (a noisy score, so another epoch than all users' best on this seed), it keeps their epoch
    few = np.zeros(len(cases.rows), bool)
    few[np.flatnonzero(~cases.is_new)[:5]] = True
    monkeypatch.setattr(train_module, "served_cases", lambda batches, cases, clicks: few)
    _, five = _small_control(
        enc, epochs=6, patience=6, cold_checkpoint=True, cold_scale=1.0, select="ndcg-served"
    )
    assert five.best_epoch == max(five.epochs, key=lambda e: e["val_ndcg_served"])["epoch"]
    assert five.best_epoch != max(five.epochs, key=lambda e: e["val_ndcg"])["epoch"]
    monkeypatch.undo()
    # without a cold checkpoint the kept weights score everyone: the same as `ndcg`
    assert TrainConfig(select="ndcg-served").by_ndcg
    _, alone = _small_control(enc, epochs=2, patience=3, cold_checkpoint=False, select="ndcg-served")
    assert all("val_ndcg_served" not in e for e in alone.epochs)
    assert alone.best_epoch == max(alone.epochs, key=lambda e: e["val_ndcg"])["epoch"]


def test_cold_scale_shrinks_only_new_users_learned_logit_towards_the_prior(encoded) -> None:  # type: ignore[no-untyped-def]
    from model_export.batches import Batches
    from model_export.evaluation import catalog_scorer, cold_model, with_weights

    _, _, enc = encoded
    batches = Batches(enc, False)
    cases = enc.ranking[VAL]
    new = np.flatnonzero(cases.is_new)[:8]
    assert len(new)

    def unseen_logits(model, history) -> torch.Tensor:  # type: ignore[no-untyped-def]
        cold = cold_model(model, history)
        assert cold is not None
        return torch.from_numpy(catalog_scorer(cold.model, batches, cases)(new))

    full_model, full = _small_control(enc, epochs=6, patience=3, cold_checkpoint=True, cold_scale=1.0)
    model, half = _small_control(enc, epochs=6, patience=3, cold_checkpoint=True, cold_scale=0.5)
    assert (full.cold_scale, half.cold_scale) == (1.0, 0.5) and half.cold_epoch == full.cold_epoch
    assert full.cold_epoch != full.best_epoch  # new users' own weights are the ones scaled
    prior = model.ranker.item_log_prior[0, 1:].double()  # the overall list, (I,)
    scaled, as_trained = unseen_logits(model, half), unseen_logits(full_model, full)
    assert torch.allclose(scaled, prior + 0.5 * (as_trained - prior), atol=1e-4)
    # everyone else is scored as before: the weights early stopping keeps are untouched
    assert all(torch.equal(v, full_model.state_dict()[k]) for k, v in model.state_dict().items())
    # 0: the prior's list alone
    assert full.cold_state is not None
    nothing = with_weights(full_model, full.cold_state)
    nothing.ranker.scale_learned(0.0)
    assert torch.allclose(
        torch.from_numpy(catalog_scorer(nothing, batches, cases)(new)), prior.expand(len(new), -1)
    )
    # where new users' best epoch is everyone's, the scaled weights are still kept apart
    _, one = _small_control(enc, epochs=1, cold_checkpoint=True, cold_scale=0.5)
    assert one.cold_epoch == one.best_epoch == 1 and one.cold_state is not None and one.cold_scale == 0.5
    _, one = _small_control(enc, epochs=1, cold_checkpoint=True, cold_scale=1.0)
    assert one.cold_state is None  # one checkpoint serves all
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        TrainConfig(cold_scale=1.5)
    from model_export.model import ModelConfig, RankerConfig

    with pytest.raises(ValueError, match="item_prior"):
        TrainConfig(cold_scale=0.5).cold_scale_for(ModelConfig(ranker=RankerConfig(item_prior=False)))
    assert TrainConfig().cold_scale_for(ModelConfig(ranker=RankerConfig(item_prior=False))) == 1.0
