from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export import data as datasets
from model_export.batches import Batches
from model_export.features import EncodedData, encode_data
from model_export.model import (
    BaseDNN,
    DINRanker,
    MailModel,
    ModelConfig,
    RankerConfig,
    UserInputs,
    ZeroShotConfig,
    ZeroShotTower,
    gaussian_mmd,
    segment_slots,
    zst_step_losses,
)
from model_export.protocol import TRAIN, SplitConfig, make_split
from tests.conftest import TinyRun


def _synthetic(virtual_slots: int = 1):  # type: ignore[no-untyped-def]
    raw = datasets.make_synthetic(n_users=200, per_user=30, seed=0)
    split = make_split(raw, SplitConfig(seed=0))
    return encode_data(raw, split, behavior_len=8, virtual_slots=virtual_slots, d_embed=8)


def _model(
    encoded: EncodedData,
    kind: str = "base",
    zst: ZeroShotConfig | None = None,
    item_bias: bool = False,
    virtual_attention: str = "shared",
) -> MailModel:
    """A small MAIL model; `item_bias`: with both item terms (a learned bias and the fixed prior,
    by the synthetic users' "segment"); `virtual_attention`: as `RankerConfig` (DIN)."""
    cfg = ModelConfig(
        model="mail",
        ranker=RankerConfig(
            kind=kind,
            hidden=(16, 8),
            d_attention=8,
            item_bias=item_bias,
            item_prior=item_bias,
            prior_segment="segment" if item_bias else "",
            virtual_attention=virtual_attention,
        ),
        zero_shot=zst or ZeroShotConfig(d_hidden=16, width=32, d_attention=8, dropout=0.0),
    )
    return MailModel(cfg, encoded.schema, torch.from_numpy(encoded.catalog.features))


def _batch(encoded, n: int = 256):  # type: ignore[no-untyped-def]
    batches = Batches(encoded, fill_new_users=False)
    return next(batches.iterate(encoded.rows(TRAIN)[:n], n))


@pytest.mark.parametrize("align", ["mmd", "mse"])
def test_zst_losses_fall_on_synthetic_data(align: str) -> None:
    torch.manual_seed(0)
    encoded = _synthetic()
    model = _model(
        encoded, zst=ZeroShotConfig(d_hidden=16, width=32, d_attention=8, dropout=0.0, align=align)
    )
    assert model.zst is not None
    attrs, _, beh, _, _, is_new = _batch(encoded, 512)
    opt = torch.optim.Adam(model.zst.parameters(), lr=3e-3)
    first = last = 0.0
    for step in range(150):
        losses = zst_step_losses(model, attrs, beh, is_new)
        assert losses is not None
        total = losses.total(model.zst.cfg)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = float(total.detach()) if step == 0 else first
        last = float(total.detach())
    assert last < 0.5 * first


def test_zst_step_changes_only_zst_parameters() -> None:
    torch.manual_seed(0)
    encoded = _synthetic()
    model = _model(encoded)
    assert model.zst is not None
    zst_ids = {id(p) for p in model.zst.parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    attrs, _, beh, _, _, is_new = _batch(encoded)
    losses = zst_step_losses(model, attrs, beh, is_new)
    assert losses is not None
    losses.total(model.zst.cfg).backward()
    for name, p in model.named_parameters():
        if id(p) in zst_ids:
            continue
        assert p.grad is None, f"ZST loss reached {name}"
    assert all(p.grad is not None for p in model.zst.parameters())
    torch.optim.Adam(model.zst.parameters(), lr=1e-2).step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    zst_names = {name for name, p in model.named_parameters() if id(p) in zst_ids}
    assert changed <= zst_names, changed - zst_names
    assert len(changed) > len(zst_names) // 2  # the step did move the tower


def test_one_zst_class_serves_both_rankers() -> None:
    """Model-agnostic: the same ZeroShotTower class, unchanged, feeds BaseDNN and the DIN tower."""
    for kind, slots in (("base", 1), ("din", 4)):
        encoded = _synthetic(virtual_slots=slots)
        model = _model(encoded, kind)
        assert type(model.zst) is ZeroShotTower
        attrs, ctx, beh, item, _, _ = _batch(encoded, 32)
        target, _ = model.ranker.behavior_target(beh)
        virtual = model.virtual_behavior(attrs)
        assert virtual.shape == target.shape == (32, slots, 8)
        empty = torch.zeros_like(beh)
        cold = model.ranker(UserInputs(attrs, ctx, empty, virtual, torch.ones(32, 1)), item)
        assert cold.shape == (32,) and torch.isfinite(cold).all()
        zst_losses = zst_step_losses(model, attrs, beh, torch.zeros(32, dtype=torch.bool))
        assert zst_losses is not None and torch.isfinite(zst_losses.l_d)


def test_din_virtual_items_with_their_own_attention_unit_never_train_the_real_one() -> None:
    """`virtual_attention="own"`: a cold row (no history, gate 1) reads its virtual items through a
    second unit, so its loss leaves the unit that reads real history untouched; shared, it moves
    it. A warm row (gate 0) trains only the real unit either way."""
    encoded = _synthetic(virtual_slots=4)
    attrs, ctx, beh, item, label, _ = _batch(encoded, 64)
    empty = torch.zeros_like(beh)
    for mode in ("shared", "own"):
        model = _model(encoded, "din", virtual_attention=mode)
        ranker = model.ranker
        assert isinstance(ranker, DINRanker)
        virtual = model.virtual_behavior(attrs).detach()
        for behavior, gate in ((empty, torch.ones(64, 1)), (beh, torch.zeros(64, 1))):
            model.zero_grad()
            logits = ranker(UserInputs(attrs, ctx, behavior, virtual, gate), item)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, label).backward()
            grads = [p.grad for p in ranker.attention.parameters() if p.grad is not None]
            real_grad = sum(float(g.abs().sum()) for g in grads)
            cold = bool(gate[0, 0] == 1)
            assert (real_grad > 0) == (mode == "shared" or not cold), (mode, cold)
            if ranker.virtual_unit is not None:
                own = [p.grad for p in ranker.virtual_unit.parameters()]
                assert any(g is not None and bool(g.abs().sum() > 0) for g in own) == cold
        assert (ranker.virtual_unit is None) == (mode == "shared")


def test_din_own_detached_unit_trains_no_embedding_through_the_virtual_read() -> None:
    """ "own-detached": the same weights as "own"; a cold row's gradient on the embeddings differs
    (its virtual read no longer reaches the target item's embedding), a warm row's is the same."""
    encoded = _synthetic(virtual_slots=4)
    attrs, ctx, beh, item, label, _ = _batch(encoded, 64)
    own, detached = (_model(encoded, "din", virtual_attention=m) for m in ("own", "own-detached"))
    detached.load_state_dict(own.state_dict())
    own.eval(), detached.eval()  # no dropout: the same function but for the detach
    virtual = own.virtual_behavior(attrs).detach()

    def embedding_grads(model: MailModel, behavior: torch.Tensor, gate: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        logits = model.ranker(UserInputs(attrs, ctx, behavior, virtual, gate), item)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, label).backward()
        return [p.grad.clone() for p in model.emb.parameters() if p.grad is not None]

    for behavior, gate, same in (
        (torch.zeros_like(beh), torch.ones(64, 1), False),
        (beh, torch.zeros(64, 1), True),
    ):
        a, b = embedding_grads(own, behavior, gate), embedding_grads(detached, behavior, gate)
        assert len(a) == len(b) > 0
        assert all(torch.allclose(x, y) for x, y in zip(a, b, strict=True)) == same


def test_basednn_virtual_behavior_with_columns_of_its_own_never_trains_the_real_ones() -> None:
    """BaseDNN, `virtual_attention="own"`: a cold row (no history, gate 1) reaches the first layer
    through `virtual_proj` alone, so its loss leaves the columns that read real behavior (d:2d of
    `user_proj`) untouched, as a warm row (gate 0) leaves `virtual_proj`; shared, a cold row moves
    those columns. Everything the shared tower has starts with the same values (created last)."""
    encoded = _synthetic()
    d = encoded.schema.d_embed
    attrs, ctx, beh, item, label, _ = _batch(encoded, 64)
    empty = torch.zeros_like(beh)
    for mode in ("shared", "own"):
        model = _model(encoded, "base", virtual_attention=mode)
        ranker = model.ranker
        assert isinstance(ranker, BaseDNN) and (ranker.virtual_proj is None) == (mode == "shared")
        virtual = model.virtual_behavior(attrs).detach()
        for behavior, gate in ((empty, torch.ones(64, 1)), (beh, torch.zeros(64, 1))):
            model.zero_grad()
            logits = ranker(UserInputs(attrs, ctx, behavior, virtual, gate), item)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, label).backward()
            grad = ranker.user_proj.weight.grad
            assert grad is not None
            behavior_columns = float(grad[:, d : 2 * d].abs().sum())
            cold = bool(gate[0, 0] == 1)
            assert (behavior_columns > 0) == (mode == "shared" or not cold), (mode, cold)
            if ranker.virtual_proj is not None:
                own = ranker.virtual_proj.weight.grad
                assert (own is not None and bool(own.abs().sum() > 0)) == cold
    torch.manual_seed(0)
    shared = dict(_model(encoded, "base").ranker.named_parameters())
    torch.manual_seed(0)
    own_params = dict(_model(encoded, "base", virtual_attention="own").ranker.named_parameters())
    assert set(own_params) - set(shared) == {"virtual_proj.weight"}
    assert all(torch.equal(p, own_params[n]) for n, p in shared.items())
    # own-detached is DIN's distinction: BaseDNN's virtual read reaches no embedding either way
    torch.manual_seed(0)
    detached = dict(_model(encoded, "base", virtual_attention="own-detached").ranker.named_parameters())
    assert all(torch.equal(p, detached[n]) for n, p in own_params.items()) and set(detached) == set(
        own_params
    )


@pytest.mark.parametrize("mode", ["shared", "own"])
def test_basednn_no_history_graph_is_the_same_function(mode: str) -> None:
    """`forward_no_history` (ranker_no_history.onnx's graph) equals `forward` with an empty history,
    both ways of reading the virtual behavior, before and after folding for serving."""
    encoded = _synthetic()
    model = _model(encoded, "base", virtual_attention=mode).eval()
    attrs, ctx, beh, _, _, _ = _batch(encoded, 1)
    user = UserInputs(attrs, ctx, torch.zeros_like(beh), model.virtual_behavior(attrs), torch.ones(1, 1))
    cands = torch.arange(1, 41)
    with torch.no_grad():
        full = model.ranker(user, cands)
        assert torch.allclose(model.ranker.forward_no_history(user, cands), full, atol=1e-6)
        model.ranker.freeze_for_serving()
        assert torch.allclose(model.ranker(user, cands), full, atol=1e-5)
        assert torch.allclose(model.ranker.forward_no_history(user, cands), full, atol=1e-5)


def test_a_din_checkpoint_from_before_the_attention_module_still_loads() -> None:
    """Run directories written before `TargetAttention` name DIN's activation unit att_key,
    att_query, att_prod, att_out; their weights load into the same places, and nothing is left."""
    encoded = _synthetic(virtual_slots=4)
    trained, fresh = _model(encoded, "din"), _model(encoded, "din")
    with torch.no_grad():
        for p in trained.ranker.parameters():
            p.add_(1.0)
    state = trained.state_dict()
    old = {k.replace("ranker.attention.", "ranker.att_"): v for k, v in state.items()}  # att_key.weight, ...
    assert any(k.startswith("ranker.att_query.") for k in old) and not any(".attention." in k for k in old)
    fresh.load_state_dict(old)  # strict: no key missing, none unexpected
    assert all(torch.equal(p, state[n]) for n, p in fresh.state_dict().items())


def test_din_own_attention_unit_leaves_the_rest_of_the_tower_initialised_as_before() -> None:
    """The second unit is created last: under one seed, every parameter the shared tower has starts
    with the same values in the tower with the unit (so control and MAIL-shared are unchanged)."""
    encoded = _synthetic(virtual_slots=4)
    torch.manual_seed(0)
    shared = dict(_model(encoded, "din").ranker.named_parameters())
    torch.manual_seed(0)
    own = dict(_model(encoded, "din", virtual_attention="own").ranker.named_parameters())
    assert set(own) - set(shared) == {n for n in own if n.startswith("virtual_unit.")} != set()
    assert all(torch.equal(p, own[n]) for n, p in shared.items())
    with pytest.raises(ValueError, match="virtual_attention"):
        RankerConfig(virtual_attention="separate")


@pytest.mark.parametrize("kind", ["base", "din"])
def test_one_user_against_n_candidates_needs_no_tiling(kind: str) -> None:
    encoded = _synthetic(virtual_slots=1 if kind == "base" else 4)
    model = _model(encoded, kind).eval()
    attrs, ctx, beh, _, _, _ = _batch(encoded, 1)
    cands = torch.arange(1, 41)
    with torch.no_grad():
        virtual = model.virtual_behavior(attrs)
        gate = torch.zeros(1, 1)
        once = model.ranker(UserInputs(attrs, ctx, beh, virtual, gate), cands)
        n = len(cands)
        tiled = UserInputs(
            attrs.expand(n, -1),
            ctx.expand(n, -1),
            beh.expand(n, -1),
            virtual.expand(n, -1, -1),
            gate.expand(n, -1),
        )
        paired = model.ranker(tiled, cands)
    assert torch.allclose(once, paired, atol=1e-6)


def test_mmd_is_zero_for_equal_samples_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    p, q = torch.randn(256, 2), torch.randn(256, 2)
    assert float(gaussian_mmd(p, p, 1.0)) == pytest.approx(0.0, abs=1e-6)
    same = float(gaussian_mmd(p, q, 1.0))  # two samples of one distribution
    assert float(gaussian_mmd(p, q + 3.0, 1.0)) > 10 * same > 0


def test_tiny_end_to_end_run(tiny_run: TinyRun) -> None:
    run_dir = tiny_run("mail", "base")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for group in ("new", "old", "all"):
        assert set(metrics["test"][group]) >= {"auc", "gauc", "logloss", "samples"}
    assert metrics["train_seconds"] > 0
    # planted attribute -> interest structure: the model ranks new users' items better than chance,
    # and the zero-shot tower predicts their behavior better than the mean behavior
    assert metrics["test"]["new"]["auc"] > 0.55
    assert metrics["diagnostics"]["virtual_r2_new"] > 0.05
    assert metrics["diagnostics"]["probe_r2_new"] > 0.05  # so can a linear map of the attributes
    assert {"L_rt", "L_a", "L_v", "L_d"} <= set(metrics["epochs"][0])
    split = json.loads((run_dir / "split.json").read_text())
    # the catalog task: each liked test sample against its recorded never-interacted items
    liked = sum(split["test"]["label"])
    assert len(split["sampled_negatives"]["items"]) == liked
    assert metrics["test"]["all"]["samples"] == liked * (1 + split["sampled_negatives"]["per_positive"])
    ranking = metrics["ranking"]["test"]
    assert (
        ranking["all"]["users"]
        == len(split["ranking"]["cases"])
        == ranking["new"]["users"] + ranking["old"]["users"]
    )
    assert ranking["new"]["ndcg@10"] > 0 and metrics["task"]["task"] == "catalog"
    assert (run_dir / "model.pt").is_file() and (run_dir / "config.json").is_file()


@pytest.mark.slow  # trains on MovieLens 100K
def test_cli_trains_on_real_data(data_dir: Path, tmp_path: Path) -> None:
    from model_export.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "ml-100k",
            "--data-dir",
            str(data_dir),
            "--protocol",
            "strict",
            "--model",
            "mail",
            "--epochs",
            "1",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert metrics["test"]["all"]["samples"] == 11 * sum(split["test"]["label"])
    assert 0.5 < metrics["test"]["old"]["auc"] < 1.0
    # whole catalog: one case per testing new user with liked items to find (all but a few of
    # them); the validating new users (a quarter) are never test cases
    validating = set(split["validation_new_users"])
    testing = set(split["new_users"]) - validating
    assert len(validating) == round(0.25 * len(split["new_users"]))
    new_cases = [c for c in split["ranking"]["cases"] if c["user"] in set(split["new_users"])]
    assert {c["user"] for c in new_cases} <= testing
    assert metrics["ranking"]["test"]["new"]["users"] == len(new_cases)
    assert 0.95 * len(testing) <= len(new_cases)
    assert 0.0 < metrics["ranking"]["test"]["new"]["ndcg@10"] < 1.0
    assert np.isfinite(metrics["diagnostics"]["virtual_r2_new"])
    # the catalog task's tower carries the popularity prior of a segment chosen on validation
    config = json.loads((out / "config.json").read_text())
    ranker = config["model"]["ranker"]
    assert ranker["item_prior"] is True and ranker["prior_segment"] != "auto"
    ckpt = torch.load(out / "model.pt", weights_only=False)
    prior = ckpt["state_dict"]["ranker.item_log_prior"]
    assert prior.shape[1] == len(ckpt["catalog"]["ids"]) + 1 and bool((prior[:, 0] == 0).all())
    assert (prior.shape[0] == 1) == (ranker["prior_segment"] == "")
    assert metrics["prior"] == {
        "segment": ranker["prior_segment"] or "overall",
        "shrink": ranker["prior_shrink"],
    }


@pytest.mark.parametrize("kind", ["base", "din"])
def test_several_users_scored_together_equal_each_alone(kind: str) -> None:
    """`owner` gathers per-user results: a micro-batch of users gives each user's own scores."""
    encoded = _synthetic(virtual_slots=1 if kind == "base" else 4)
    model = _model(encoded, kind).eval()
    attrs, ctx, beh, _, _, _ = _batch(encoded, 3)
    with torch.no_grad():
        virtual = model.virtual_behavior(attrs)
        gate = torch.tensor([[1.0], [0.0], [0.5]])
        cands = [torch.arange(1, 6), torch.arange(10, 13), torch.arange(40, 48)]
        alone = [
            model.ranker(
                UserInputs(
                    attrs[u : u + 1], ctx[u : u + 1], beh[u : u + 1], virtual[u : u + 1], gate[u : u + 1]
                ),
                cands[u],
            )
            for u in range(3)
        ]
        owner = torch.cat([torch.full((len(c),), u) for u, c in enumerate(cands)])
        together = model.ranker(UserInputs(attrs, ctx, beh, virtual, gate), torch.cat(cands), owner)
    # torch's GEMM blocking depends on the batch, so equal to float rounding here; the exported
    # graph on onnxruntime is held to exact equality by the service's micro-batching test
    assert torch.allclose(together, torch.cat(alone), atol=1e-6, rtol=0)


def test_item_representations_gathered_from_the_catalog_equal_those_computed_per_row() -> None:
    torch.manual_seed(0)
    encoded = _synthetic()
    emb = _model(encoded).emb
    n_catalog = emb.catalog.shape[0]
    rows = torch.randint(0, n_catalog, (n_catalog + 7, 3))  # more rows than the catalog: gathered
    gathered = emb.items(rows)
    per_row = torch.stack([emb.items(rows[i]) for i in range(rows.shape[0])])  # few rows: per row
    assert gathered.shape == (*rows.shape, emb.d)
    torch.testing.assert_close(gathered, per_row, rtol=0, atol=1e-6)
    assert torch.all(gathered[rows == 0] == 0)  # PAD row -> zeros
    (gathered**2).sum().backward()
    for table in emb.item:  # PAD ids get no gradient
        assert isinstance(table, torch.nn.Embedding) and table.weight.grad is not None
        assert table.weight.grad[0].abs().sum() == 0


def test_segment_prior_adds_the_row_of_each_users_segment_and_is_never_trained() -> None:
    encoded = _synthetic()
    model = _model(encoded, item_bias=True).eval()  # its prior: one row per "segment" id
    prior = model.ranker.item_log_prior
    assert len(model.ranker.prior_blocks) == 1
    slot = model.ranker.prior_blocks[0][0]
    cardinality = next(f.cardinality for f in encoded.schema.user_fields if f.name == "segment")
    assert prior is not None and prior.shape == (cardinality, encoded.catalog.features.shape[0])
    model.ranker.set_item_prior(torch.randn(prior.shape))
    assert model.ranker.item_bias is not None
    with torch.no_grad():
        model.ranker.item_bias.zero_()
    attrs = torch.from_numpy(encoded.user_attrs[:40])
    items = torch.arange(1, 6)
    for u in range(len(attrs)):  # one user, broadcast over the targets
        got = model.ranker._bias(items, attrs[u : u + 1], None)
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, prior[attrs[u, slot], items])
    owner = torch.arange(len(attrs)).repeat_interleave(len(items))  # several users at once
    got = model.ranker._bias(items.repeat(len(attrs)), attrs, owner)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, prior[attrs[owner, slot], items.repeat(len(attrs))])
    assert len({int(attrs[u, slot]) for u in range(len(attrs))}) > 1  # rows really differ by user
    assert "ranker.item_log_prior" in model.state_dict()
    assert all(p is not prior for p in model.ranker_parameters())  # a buffer: no optimizer moves it
    with pytest.raises(ValueError, match="expected"):
        model.ranker.set_item_prior(torch.zeros(1, prior.shape[1]))
    with pytest.raises(ValueError, match="no item prior"):
        _model(encoded).ranker.set_item_prior(prior)
    with pytest.raises(ValueError, match="other than the user id"):
        segment_slots(encoded.schema, "user_id")


@pytest.mark.parametrize(
    ("kind", "item_bias"), [("base", False), ("din", False), ("base", True), ("din", True)]
)
def test_ranker_frozen_for_serving_scores_as_trained_without_batch_norms(kind: str, item_bias: bool) -> None:
    """Export's serving form: item tables, batch norms folded, fused field tables; same scores."""
    torch.manual_seed(0)
    encoded = _synthetic(virtual_slots=1 if kind == "base" else 4)
    model = _model(encoded, kind, item_bias=item_bias).eval()
    if model.ranker.item_bias is not None:
        with torch.no_grad():
            model.ranker.item_bias.normal_()
        assert model.ranker.item_log_prior is not None
        model.ranker.set_item_prior(torch.randn(model.ranker.item_log_prior.shape))
    for bn in (m for m in model.ranker.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():  # statistics and affine terms far from the identity they start as
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    attrs, ctx, beh, _, _, _ = _batch(encoded, 3)
    cands = torch.arange(0, encoded.catalog.features.shape[0])
    served = copy.deepcopy(model)
    served.ranker.freeze_for_serving()
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in served.ranker.modules())
    with torch.no_grad():
        for u in range(3):
            user = UserInputs(
                attrs[u : u + 1],
                ctx[u : u + 1],
                beh[u : u + 1],
                model.virtual_behavior(attrs[u : u + 1]),
                torch.tensor([[0.5]]),
            )
            got, want = served.ranker(user, cands), model.ranker(user, cands)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_attribute_probe_finds_nothing_in_shuffled_attributes(tiny_run: TinyRun) -> None:
    """The linear probe's R^2 is the attributes' information, not the probe's: with each user's
    attributes given to another user, it falls to about zero (the mean) or below."""
    from model_export.checkpoint import load_checkpoint
    from model_export.evaluation import mean_behavior, probe_r2
    from model_export.protocol import TEST

    model, _ = load_checkpoint(tiny_run("mail", "base"))
    raw = datasets.make_synthetic(seed=0)
    encoded = encode_data(
        raw, make_split(raw, SplitConfig(protocol="strict", seed=0)), behavior_len=8, d_embed=8
    )
    batches = Batches(encoded, fill_new_users=False)
    train, test = encoded.rows(TRAIN), encoded.rows(TEST)
    new_test = test[encoded.is_new[test]]
    mean = mean_behavior(model, batches, train)
    planted = probe_r2(model, batches, train, new_test, mean)
    encoded.user_attrs[:] = encoded.user_attrs[np.random.default_rng(0).permutation(len(encoded.user_attrs))]
    shuffled = probe_r2(model, batches, train, new_test, mean)
    assert planted > 0.05 and shuffled < 0.02
