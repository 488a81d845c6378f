"""The candidate stage (service.candidates): its search alone, a model's stage at load and reload,
and /recommend through it on a real service."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.bundles import ModelRegistry, load_model
from service.candidates import CandidateStage, RetrieveOptions
from service.contract import ITEM_VECTORS_FILE, MANIFEST, content_version, encode, load_bundle
from service.inference import SessionOptions
from service.metrics import Metrics
from tests.service.conftest import NEW_USER, Live, start_live

CONTEXT = {"timestamp": 1_700_000_000}
ON = RetrieveOptions(above=0, candidates=20, probes=16, popular=5)


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
        body = {"user_id": "old-1", "attributes": NEW_USER, "context": CONTEXT, "history": seen, "k": 7}
        second = client.post("/recommend", json=body, headers={"X-Variant": "mail"})
        assert second.status_code == 200, second.text
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
    # what the stage ranked is what its search found for this user (the service asks for k more)
    stage = served.candidates
    assert stage is not None
    found = stage.search(served.towers.score(enc, virtual, 1.0, stage.probes), extra=30)  # k, no history
    assert set(catalog.rows(ids)) <= set(np.r_[stage.probes, found].tolist())
    got = [i["item_id"] for i in second.json()["items"]]
    assert len(got) == 7 and not set(got) & set(seen)


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
    everything = RetrieveOptions(0, n, 8, 4)  # the search keeps every item: nothing can be lost
    result = evaluate_bundle(bundle, None, progress=False, retrieve=everything)
    for group in ("new", "old"):
        assert result["retrieval"][group]["recall_of_top100"] == 1.0
        assert result["retrieval"][group]["ndcg@10"] == pytest.approx(
            result["ranking"][group]["ndcg@10"], abs=1e-9
        )
    small = evaluate_bundle(bundle, None, progress=False, retrieve=RetrieveOptions(0, 2, 4, 1))
    assert small["retrieval"]["all"]["candidates"] < n
