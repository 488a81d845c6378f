"""The candidate stage (service.candidates): its search alone, a model's stage at load and reload,
and /recommend through it on a real service."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.bundles import ModelRegistry, load_model
from service.candidates import CandidateStage, PriorStage, RetrieveOptions, prior_stage
from service.contract import ITEM_VECTORS_FILE, MANIFEST, blend_gate, content_version, encode, load_bundle
from service.inference import SessionOptions
from service.metrics import Metrics
from tests.service.conftest import NEW_USER, Live, start_live

CONTEXT = {"timestamp": 1_700_000_000}
# as `retrieving` runs
ON = RetrieveOptions(above=0, candidates=20, probes=16, popular=5, prior=10, prior_clicked=12)


def _options(retrieve: RetrieveOptions = ON) -> SessionOptions:
    return SessionOptions(device="cpu", retrieve=retrieve)


def test_search_finds_the_best_items_of_a_linear_score() -> None:
    rng = np.random.default_rng(1)
    vectors = np.r_[np.zeros((1, 12)), rng.normal(size=(2000, 12))].astype(np.float32)
    counts = rng.integers(0, 50, 2000)
    stage = CandidateStage(vectors, counts, RetrieveOptions(0, candidates=50, probes=64, popular=10))
    w = rng.normal(size=12)
    logits = vectors @ w  # (I+1,): a score the item vectors explain exactly
    probe_scores = 1 / (1 + np.exp(-logits[stage.probes]))
    found = stage.search(probe_scores)
    rows = np.union1d(found, stage.probes)
    best = np.argsort(-logits[1:])[:50] + 1
    assert np.isin(best, rows).mean() >= 0.9
    assert not np.isin(found, stage.probes).any()  # probes are scored once, not twice
    assert np.isin(np.argsort(-counts, kind="stable")[:10] + 1, rows).all()  # the popular rows
    assert rows.min() >= 1 and rows.max() <= 2000
    # room for rows the caller drops
    assert len(stage.search(probe_scores, extra=30)) > len(found)


def test_a_model_builds_the_stage_only_above_the_setting(tiny_bundle: Callable[..., Path]) -> None:
    bundle = tiny_bundle("mail", "base")
    n = len(load_bundle(bundle).catalog)
    assert load_model("mail", bundle, _options()).candidates is not None
    above = RetrieveOptions(n, 20, 16, 5)
    assert load_model("mail", bundle, _options(above)).candidates is None  # not larger than it
    popularity = load_model("mail", bundle, _options(), kind="popularity")
    assert popularity.candidates is None  # a popularity variant has nothing to retrieve for


def _without_vectors(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` as exported before item vectors: no file, no manifest key."""
    shutil.copytree(bundle, out)
    (out / ITEM_VECTORS_FILE).unlink()
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["item_vectors"]
    del manifest["files"][ITEM_VECTORS_FILE]
    manifest["model_version"] = content_version(manifest["files"])
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_a_bundle_without_item_vectors_loads_and_scores_the_whole_catalog(
    tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    old = _without_vectors(tiny_bundle("mail", "base"), tmp_path / "old")
    assert load_bundle(old).item_vectors_path is None
    assert load_model("mail", old, _options()).candidates is None


def test_reload_builds_a_new_stage(tiny_bundle: Callable[..., Path]) -> None:
    bundle = tiny_bundle("mail", "base")

    async def reload_twice() -> tuple[object, object]:
        registry = ModelRegistry(_options(), Metrics())
        try:
            first, _ = await registry.reload("mail", bundle)
            second, old = await registry.reload("mail", bundle)
            assert old is first
            return first.candidates, second.candidates
        finally:
            registry.close()

    before, after = asyncio.run(reload_twice())
    assert before is not None and after is not None and before is not after


@pytest.fixture(scope="module")
def retrieving(tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = start_live(
        tmp_path_factory.mktemp("retrieving"),
        tiny_bundle,
        MAILREC_RETRIEVE_ABOVE="0",
        MAILREC_RETRIEVE_CANDIDATES="20",
        MAILREC_RETRIEVE_PROBES="16",
        MAILREC_RETRIEVE_POPULAR="5",
        MAILREC_RETRIEVE_PRIOR="10",
        MAILREC_RETRIEVE_PRIOR_CLICKED="12",
    )
    yield env
    env.close()


def test_recommend_through_the_stage_is_ranker_ordered_and_respects_k_and_history(
    retrieving: Live,
) -> None:
    bundle = retrieving.bundles["mail"]
    model = load_model("mail", bundle, _options())
    catalog = model.bundle.catalog
    with retrieving.client() as client:
        first = client.post(
            "/recommend",
            json={"user_id": "new-1", "attributes": NEW_USER, "context": CONTEXT, "k": 30},
            headers={"X-Variant": "mail"},
        )
        assert first.status_code == 200, first.text
        items = first.json()["items"]
        seen = [items[0]["item_id"], items[3]["item_id"]]
        body = {"user_id": "new-3", "attributes": NEW_USER, "context": CONTEXT, "history": seen, "k": 7}
        second = client.post("/recommend", json=body, headers={"X-Variant": "mail"})
        assert second.status_code == 200, second.text
        pin = model.bundle.manifest.cold_checkpoint
        assert pin is not None and 2 < pin.clicks <= 30
        many = [i["item_id"] for i in items[: pin.clicks]]  # clicked enough to leave the cold checkpoint
        body = {"user_id": "new-4", "attributes": NEW_USER, "context": CONTEXT, "history": many, "k": 7}
        third = client.post("/recommend", json=body, headers={"X-Variant": "mail"})
        assert third.status_code == 200, third.text
    assert len(items) == 30 and second.json()["variant"] == "mail"
    ids = [i["item_id"] for i in items]
    assert len(set(ids)) == 30 and all(i in catalog.index for i in ids)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # the scores are the ranker's own for those items
    enc = encode(model.bundle.schema, catalog, "new-1", NEW_USER, (), CONTEXT)
    served = model.for_user(enc.user_attrs, enc.n_history)  # never seen: the cold checkpoint's
    assert served is model.unseen is not None
    virtual = served.towers.virtual_behavior(enc.user_attrs)
    ranker = served.towers.score(enc, virtual, 1.0, catalog.rows(ids))
    assert np.allclose(ranker, scores, atol=1e-6)
    # a cold user with no history: what was ranked is the prior's first 10 + k rows, the best of them
    prior = served.prior_candidates
    assert prior is not None and prior.rows == 10
    rows = prior.search(enc.user_attrs, extra=30)
    assert len(rows) == 40 < len(catalog)
    assert set(catalog.rows(ids)) <= set(rows.tolist())
    every = served.towers.score(enc, virtual, 1.0, rows)
    assert sorted(scores, reverse=True) == pytest.approx(sorted(every, reverse=True)[:30], abs=1e-6)
    # a new user with 2 clicks, still the cold checkpoint's: the prior's first 12 rows, plus k and
    # the clicks, the clicks left out, ranked by the cold checkpoint
    enc2 = encode(model.bundle.schema, catalog, "new-3", NEW_USER, seen, CONTEXT)
    assert model.for_user(enc2.user_attrs, enc2.n_history) is served and prior.clicked == 12
    rows2 = prior.search(enc2.user_attrs, extra=7 + 2, n_history=2)
    assert len(rows2) == 21 < len(catalog)
    rows2 = rows2[~np.isin(rows2, catalog.rows(seen))]
    gate2 = blend_gate(enc2.n_history, served.towers.fill_mode, served.towers.blend_tau)
    v2 = served.towers.virtual_behavior(enc2.user_attrs) if gate2 > 0 else None
    best2 = rows2[np.argsort(-served.towers.score(enc2, v2, gate2, rows2), kind="stable")[:7]]
    got2 = second.json()["items"]
    assert len(got2) == 7 and not {i["item_id"] for i in got2} & set(seen)
    assert sorted(catalog.rows([i["item_id"] for i in got2]).tolist()) == sorted(best2.tolist())
    # clicked enough to leave it: the search (what was ranked is what it found; k more asked)
    enc3 = encode(model.bundle.schema, catalog, "new-4", NEW_USER, many, CONTEXT)
    served3 = model.for_user(enc3.user_attrs, enc3.n_history)
    assert served3 is model and served3.prior_candidates is None
    stage = served3.candidates
    assert stage is not None
    v3 = served3.towers.virtual_behavior(enc3.user_attrs) if served3.towers.zero_shot is not None else None
    gate = blend_gate(enc3.n_history, served3.towers.fill_mode, served3.towers.blend_tau)
    found = stage.search(served3.towers.score(enc3, v3, gate, stage.probes), extra=len(many) + 7)
    got = [i["item_id"] for i in third.json()["items"]]
    assert len(got) == 7 and not set(got) & set(many)
    assert set(catalog.rows(got)) <= set(np.r_[stage.probes, found].tolist())


def test_candidates_in_the_request_bypass_the_stage(retrieving: Live) -> None:
    catalog = load_bundle(retrieving.bundles["mail"]).catalog
    given = catalog.ids[-3:]
    with httpx.Client(base_url=retrieving.url, timeout=30) as client:
        r = client.post(
            "/recommend",
            json={"user_id": "new-2", "attributes": NEW_USER, "candidates": given, "k": 3},
            headers={"X-Variant": "mail"},
        )
    assert r.status_code == 200, r.text
    assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(given)


def test_export_writes_the_rankers_prior_and_the_stage_reads_it_as_the_graph_adds_it(
    tiny_run: Callable[..., Path], tiny_bundle: Callable[..., Path]
) -> None:
    from model_export.checkpoint import load_checkpoint

    bundle = load_bundle(tiny_bundle("mail", "base"))
    model, _ = load_checkpoint(tiny_run("mail", "base"))
    ranker = model.ranker
    assert ranker.item_log_prior is not None and ranker.prior_blocks  # the synthetic segment
    for b in (bundle, bundle.cold):
        assert b is not None and b.item_prior_path is not None and b.manifest.item_prior is not None
        table = np.load(b.item_prior_path, allow_pickle=False)
        np.testing.assert_array_equal(table, ranker.item_log_prior.numpy())
        assert list(b.manifest.item_prior.blocks) == ranker.prior_blocks
    assert bundle.manifest.item_prior is not None
    stage = PriorStage(table, bundle.manifest.item_prior.blocks, 5)
    items = torch.arange(1, len(bundle.catalog) + 1)
    people = [NEW_USER, {**NEW_USER, "segment": "s3"}, {}]
    attrs = np.stack(
        [encode(bundle.schema, bundle.catalog, "u", a, (), CONTEXT).user_attrs[0] for a in people]
    )
    assert len({tuple(a) for a in attrs.tolist()}) == 3
    with torch.no_grad():
        for a in attrs:
            want = ranker._bias(items, torch.from_numpy(a[None, :]), None)
            assert isinstance(want, torch.Tensor)
            np.testing.assert_allclose(stage.scores(a), want.numpy(), atol=1e-6)
            # the 5 rows with the highest prior (ties either way)
            got = want.numpy()[stage.search(a) - 1]
            np.testing.assert_allclose(np.sort(got), np.sort(want.numpy())[-5:])
    assert len(stage.search(attrs[0], extra=3)) == 8


def test_the_prior_stage_is_a_cold_checkpoints_only_and_only_above_the_setting(
    tiny_bundle: Callable[..., Path],
) -> None:
    path = tiny_bundle("mail", "base")
    model = load_model("mail", path, _options())
    assert model.prior_candidates is None  # everyone's weights: their learned part is not scaled down
    assert model.unseen is not None and model.unseen.prior_candidates is not None
    n = len(model.bundle.catalog)
    for off in (RetrieveOptions(0, 20, 16, 5, prior=0, prior_clicked=0), RetrieveOptions(n, 20, 16, 5)):
        unseen = load_model("mail", path, _options(off)).unseen
        assert unseen is not None and unseen.prior_candidates is None
    # each half on its own: a user it does not serve gets 0 rows (the service takes the search)
    for no_history, clicked in ((0, 7), (9, 0)):
        unseen = load_model("mail", path, _options(RetrieveOptions(0, 20, 16, 5, no_history, clicked))).unseen
        assert unseen is not None and unseen.prior_candidates is not None
        assert [unseen.prior_candidates.rows_for(h) for h in (0, 1, 5)] == [no_history, clicked, clicked]
    parent, cold, pin = model.bundle, model.bundle.cold, model.bundle.manifest.cold_checkpoint
    assert cold is not None and pin is not None and pin.scale < 1
    assert prior_stage(parent, ON) is not None
    older = replace(parent, cold=replace(cold, manifest=replace(cold.manifest, item_prior=None)))
    assert prior_stage(older, ON) is None  # exported before the table
    # a cold checkpoint whose learned part is not scaled down: the prior does not decide its top
    unscaled = replace(parent, manifest=replace(parent.manifest, cold_checkpoint=replace(pin, scale=1.0)))
    assert prior_stage(unscaled, ON) is None


def test_export_writes_the_rankers_item_side(tiny_bundle: Callable[..., Path]) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    assert bundle.item_vectors_path is not None
    vectors = np.load(bundle.item_vectors_path, allow_pickle=False)
    # BaseDNN: the item half of its first layer, one row per catalog row, PAD row 0 zero
    assert vectors.dtype == np.float32 and vectors.shape == (len(bundle.catalog) + 1, 32)
    assert not vectors[0].any() and np.abs(vectors[1:]).sum(1).min() > 0


def test_evaluate_ranks_the_recorded_cases_through_the_stage(tiny_bundle: Callable[..., Path]) -> None:
    """`evaluate --retrieve`: with room for every item the stage ranks what the whole catalog does."""
    from model_export.evaluate import evaluate_bundle
    from service.candidates import RetrieveOptions

    bundle = tiny_bundle("mail", "base")
    n = len(json.loads((bundle / "catalog.json").read_text())["ids"])
    everything = RetrieveOptions(0, n, 8, 4, prior=n)  # the search and prior keep every item: nothing lost
    result = evaluate_bundle(bundle, None, progress=False, retrieve=everything)
    for group in ("new", "old"):
        assert result["retrieval"][group]["recall_of_top100"] == 1.0
        assert result["retrieval"][group]["ndcg@10"] == pytest.approx(
            result["ranking"][group]["ndcg@10"], abs=1e-9
        )
    small = evaluate_bundle(bundle, None, progress=False, retrieve=RetrieveOptions(0, 2, 4, 1, prior=3))
    assert small["retrieval"]["all"]["candidates"] < n
    assert small["retrieval"]["new"]["candidates"] == 3  # new users: the cold checkpoint's prior rows
