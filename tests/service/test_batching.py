"""Micro-batching: merged ranker calls give exactly the unbatched scores; on only where it should be."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.batching import MicroBatcher
from service.contract import (
    FP32,
    MANIFEST,
    RANKER_BATCH_FILE,
    Encoded,
    FloatArray,
    IntArray,
    content_version,
    encode,
)
from service.contract import load_bundle as load
from service.inference import SessionOptions, Towers
from tests.service.conftest import Live, start_live
from tests.service.test_units import _FakeGpuOrt

Call = tuple[Encoded, FloatArray | None, float, IntArray]


def _calls(towers: Towers, n: int) -> list[Call]:
    """n different users: cold and warm, several attributes, candidate lists of many sizes."""
    bundle = towers.bundle
    catalog = bundle.catalog
    rng = np.random.default_rng(3)
    out: list[Call] = []
    for i in range(n):
        attrs = {"segment": f"s{i % 5}", "age": 18 + 7 * i, "gender": "MF"[i % 2]}
        history = [catalog.ids[j] for j in rng.choice(len(catalog), i % 4 * 3, replace=False)]
        enc = encode(
            bundle.schema, catalog, f"user-{i}", attrs, history, {"timestamp": 1_000_000_000 + 3600 * i}
        )
        gate = [1.0, 0.0, 0.5][i % 3]
        virtual = towers.virtual_behavior(enc.user_attrs) if gate > 0 else None
        size = [1, 5, 100, len(catalog), 37][i % 5]
        rows = rng.integers(1, len(catalog) + 1, size).astype(np.int64)
        out.append((enc, virtual, gate, rows))
    return out


@pytest.mark.parametrize(("model", "ranker"), [("mail", "base"), ("mail", "din"), ("control", "base")])
@pytest.mark.parametrize("max_rows", [100_000, 300])
def test_batched_scores_equal_unbatched_exactly(
    tiny_bundle: Callable[..., Path], model: str, ranker: str, max_rows: int
) -> None:
    towers = Towers(load(tiny_bundle(model, ranker)), SessionOptions(device="cpu", microbatch="on"))
    assert towers.ranker_batch is not None
    calls = _calls(towers, 23)
    alone = [towers.score(*c) for c in calls]
    batcher = MicroBatcher(towers, max_wait_s=0.05, max_rows=max_rows)

    async def together() -> list[FloatArray]:
        return await asyncio.gather(*(batcher.score(*c) for c in calls))

    merged = asyncio.run(together())
    assert 1 <= batcher.calls < len(calls)  # requests were merged
    for got, want in zip(merged, alone, strict=True):
        assert got.shape == want.shape and np.array_equal(got, want)
    assert all(np.array_equal(a, b) for a, b in zip(towers.score_many(calls), alone, strict=True))


@pytest.mark.parametrize("has_gpu", [False, True])
def test_auto_batches_only_on_cuda(
    tiny_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, has_gpu: bool
) -> None:
    import onnxruntime as ort

    import service.inference as inference

    bundle = load(tiny_bundle("mail", "base"))
    fake = _FakeGpuOrt(ort, has_gpu)
    fake.listed = [inference.CUDA, inference.CPU]
    monkeypatch.setattr(inference, "ort", fake)
    auto = inference.Towers(bundle, SessionOptions(device="auto", microbatch="auto"))
    assert (auto.ranker_batch is not None) == has_gpu
    assert inference.Towers(bundle, SessionOptions(device="auto", microbatch="off")).ranker_batch is None
    assert inference.Towers(bundle, SessionOptions(device="cpu", microbatch="on")).ranker_batch is not None


def test_a_bundle_without_the_batch_graph_still_loads_and_serves_unbatched(
    tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    root = tmp_path / "old"
    shutil.copytree(tiny_bundle("mail", "base"), root)
    raw = json.loads((root / MANIFEST).read_text())
    (root / RANKER_BATCH_FILE).unlink()
    del raw["files"][RANKER_BATCH_FILE], raw["ranker_batch"], raw["onnx"]["ranker_batch"]
    del raw["precisions"], raw["default_precision"]  # a bundle that old predates precisions too
    raw["model_version"] = content_version(raw["files"])
    (root / MANIFEST).write_text(json.dumps(raw))
    bundle = load(root)
    assert bundle.precisions[FP32].ranker_batch is None
    assert Towers(bundle, SessionOptions(device="cpu", microbatch="on")).ranker_batch is None


def test_export_records_that_batched_and_single_graphs_agree(tiny_bundle: Callable[..., Path]) -> None:
    for model, ranker in [("mail", "base"), ("mail", "din")]:
        parity = load(tiny_bundle(model, ranker)).manifest.parity.ranker_batch
        assert parity is not None
        assert parity.scores_max_abs_diff <= 1e-5 and parity.equals_ranker_exactly is True


def test_a_service_with_microbatching_answers_as_one_without(
    live: Live, tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    batched = start_live(tmp_path, tiny_bundle, MAILREC_MICROBATCH="on", MAILREC_MICROBATCH_WAIT_MS="20")
    bodies = [
        {
            "user_id": f"mb-{i}",
            "attributes": {"segment": f"s{i % 4}", "age": 20 + i},
            "candidates": [str(j) for j in range(1 + i, 60 + 7 * i)],
            "k": 20,
            "context": {"timestamp": 1_000_000_000},
        }
        for i in range(16)
    ]

    async def ask(url: str) -> list[list[tuple[str, float]]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            rs = await asyncio.gather(
                *(ac.post("/recommend", json=b, headers={"X-Variant": "mail"}) for b in bodies)
            )
        assert {r.status_code for r in rs} == {200}
        return [[(i["item_id"], i["score"]) for i in r.json()["items"]] for r in rs]

    try:
        assert httpx.get(f"{batched.url}/models").json()["models"][1]["microbatch"] is True
        assert asyncio.run(ask(batched.url)) == asyncio.run(ask(live.url))
    finally:
        batched.close()
