"""The cold-start baselines train on planted synthetic data and touch only what they should."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from model_export import baselines
from model_export.batches import Batches
from model_export.catalog import user_id_slot
from model_export.evaluation import mean_behavior
from model_export.model import FeatureEmbeddings, ModelConfig, RankerConfig
from model_export.pipeline import Prepared, RunSpec, prepare, run
from model_export.protocol import TRAIN
from model_export.train import TrainConfig
from service.contract import OOV


def _spec() -> RunSpec:
    return RunSpec(
        dataset="synthetic",
        protocol="strict",
        seed=0,
        behavior_len=8,
        d_embed=8,
        model=ModelConfig(model="control", ranker=RankerConfig(hidden=(32, 16), d_attention=16)),
        train=TrainConfig(epochs=3, lr=5e-3, lr_zst=5e-3, batch_size=256, progress=False, threads=1),
    )


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    return prepare(_spec())


def _sane(report: dict[str, Any]) -> None:
    for group in ("new", "old"):
        assert 0.55 < report["test"][group]["auc"] < 1.0
        assert math.isfinite(report["test"][group]["logloss"])
    assert all(math.isfinite(v) for e in report["epochs"] for v in e.values())


def _batch(prepared: Prepared, n: int = 256) -> tuple[torch.Tensor, ...]:
    data = prepared.encoded
    return next(Batches(data, fill_new_users=False).iterate(data.rows(TRAIN)[:n], n))


def test_mean_fill_serves_the_old_users_mean_behavior(prepared: Prepared) -> None:
    model, report = run(_spec(), None, prepared, baselines.mean_fill())
    _sane(report)
    assert abs(report["diagnostics"]["virtual_r2_new"]) < 0.1  # the mean, by construction
    assert model.zst is not None and not list(model.zst.parameters())
    data = prepared.encoded
    attrs = torch.from_numpy(data.user_attrs[:5])
    virtual = model.virtual_behavior(attrs)
    assert torch.equal(virtual, virtual[:1].expand_as(virtual))  # the same for every user
    mean = mean_behavior(model, Batches(data, False), data.rows(TRAIN))
    # an EMA over the last training batches: close to the mean over all training rows
    assert float(torch.cosine_similarity(virtual[0].flatten(), mean.flatten(), dim=0)) > 0.95


def test_llae_learns_attributes_to_behavior(prepared: Prepared) -> None:
    _, report = run(_spec(), None, prepared, baselines.llae(rank_weight=1e-3))
    _sane(report)
    assert report["diagnostics"]["virtual_r2_new"] > 0.05  # planted structure is found
    assert report["epochs"][-1]["L_d"] > 0
    # a heavier low-rank weight gives a lower-rank map
    assert _nuclear(prepared, 1e-1) < 0.8 * _nuclear(prepared, 1e-4)


def _nuclear(prepared: Prepared, weight: float) -> float:
    model, _ = run(_spec(), None, prepared, baselines.llae(rank_weight=weight))
    assert isinstance(model.zst, baselines.LLAE)
    return float(torch.linalg.matrix_norm(model.zst.w.detach(), ord="nuc"))


def test_dropoutnet_drops_behavior_and_id_of_old_users_only(prepared: Prepared) -> None:
    hooks = baselines.DropoutNet(p=0.5, seed=0)
    hooks.build(ModelConfig(model="control"), prepared.encoded.schema, torch.zeros(1, 2))
    attrs, ctx, beh, item, label, is_new = _batch(prepared)
    is_new = torch.arange(len(attrs)) % 4 == 0  # a quarter marked new, to check they are spared
    out = hooks.batch((attrs, ctx, beh, item, label, is_new))
    slot = user_id_slot(prepared.encoded.schema)
    dropped = out[0][:, slot] == OOV
    assert not dropped[is_new].any()
    assert 0.35 < dropped[~is_new].float().mean() < 0.65
    assert (out[2][dropped] == 0).all() and torch.equal(out[2][~dropped], beh[~dropped])
    keep = [i for i in range(attrs.shape[1]) if i != slot]
    assert torch.equal(out[0][:, keep], attrs[:, keep]) and torch.equal(attrs, _batch(prepared)[0])


def test_dropoutnet_trains(prepared: Prepared) -> None:
    _, report = run(_spec(), None, prepared, baselines.DropoutNet(p=0.5))
    _sane(report)


def test_metaemb_generates_embeddings_for_unknown_ids_only(prepared: Prepared) -> None:
    model, report = run(_spec(), None, prepared, baselines.MetaEmb(alpha=0.1, lr=5e-3))
    _sane(report)
    assert {"L_cold", "L_warm"} <= set(report["epochs"][-1])
    assert isinstance(model, baselines.MetaEmbModel)
    slot = model.emb.id_slot
    known = prepared.encoded.user_attrs[prepared.encoded.user_attrs[:, slot] != OOV]
    attrs = torch.from_numpy(known[:8])
    plain = FeatureEmbeddings.user_fields(model.emb, attrs)[0]
    assert torch.equal(model.emb.user_fields(attrs)[0], plain)  # known ids: their own embedding
    unknown = attrs.clone()
    unknown[:, slot] = OOV
    cold = model.emb.user_fields(unknown)[0]
    assert not torch.allclose(cold[:, slot], plain[:, slot])
    assert not torch.allclose(cold[0, slot], cold[1:, slot])  # generated from each user's attributes
    assert torch.equal(cold[:, slot + 1 :], plain[:, slot + 1 :])


def test_metaemb_step_moves_only_the_generator(prepared: Prepared) -> None:
    hooks = baselines.MetaEmb(alpha=0.5, lr=1e-2, seed=0)
    torch.manual_seed(0)
    model = hooks.build(ModelConfig(model="control", ranker=RankerConfig(hidden=(16, 8))), *_tables(prepared))
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = hooks.after_step(model, _batch(prepared, 512))
    assert set(losses) == {"L_cold", "L_warm"}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.removeprefix("ranker.").startswith("emb.generator.") for k in changed), changed
    assert model.ranker.training  # restored after the frozen meta step


def _tables(prepared: Prepared) -> tuple[Any, torch.Tensor]:
    data = prepared.encoded
    return data.schema, torch.from_numpy(data.catalog.features)
