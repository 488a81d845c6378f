"""Cold users' remembered whole-catalog scores (service.coldscores): the memo alone, a model's memo
at load, its fill against the ranker, and /recommend through it on a real service."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.harness.metrics import metric_value
from service.bundles import ModelRegistry, load_model
from service.coldscores import ColdScoreOptions, ColdScores, Remembered, memo_key
from service.contract import FloatArray, IntArray, encode, load_bundle
from service.inference import SessionOptions
from service.metrics import Metrics
from tests.service.conftest import NEW_USER, Live, start_live

CONTEXT = {"timestamp": 1_700_000_000}


def _memo(n: int = 10, **options: Any) -> ColdScores:
    return ColdScores(np.arange(1, n + 1, dtype=np.int64), ColdScoreOptions(**options))


def test_a_key_is_filled_on_its_second_miss_only() -> None:
    memo = _memo(doorkeeper=2)
    assert not memo.admit(b"a")  # first miss: remembered, not filled
    assert memo.admit(b"a")  # second miss: fill it
    assert not memo.admit(b"b") and not memo.admit(b"c") and not memo.admit(b"d")
    assert not memo.admit(b"b")  # pushed out of the two-key doorkeeper by c and d: a first miss again
    assert memo.admit(b"b")


def test_least_recently_used_scores_go_first_within_the_byte_budget() -> None:
    per_entry = 11 * 4  # (I + 1,) float32
    memo = _memo(max_mb=2.5 * per_entry / 1024 / 1024)
    entry = Remembered(np.zeros(11, np.float32), None)
    for key in (b"a", b"b"):
        memo.put(key, entry)
    assert memo.get(b"a") is not None  # a is now the most recent
    memo.put(b"c", entry)
    assert memo.get(b"b") is None and memo.get(b"a") is not None and memo.get(b"c") is not None
    assert len(memo) == 2 and memo.bytes == 2 * per_entry


def test_which_models_get_a_memo(tiny_bundle: Callable[..., Path]) -> None:
    bundle = tiny_bundle("mail", "base")
    n = len(load_bundle(bundle).catalog)

    def cold(options: ColdScoreOptions, kind: str = "model") -> ColdScores | None:
        return load_model("mail", bundle, SessionOptions(device="cpu", cold_scores=options), kind=kind).cold

    assert cold(ColdScoreOptions()) is not None
    assert cold(ColdScoreOptions(max_mb=0)) is None  # turned off
    assert cold(ColdScoreOptions(max_items=n - 1)) is None  # the catalog is larger than the setting
    assert cold(ColdScoreOptions(), kind="popularity") is None  # its scores are a lookup already


def test_a_fill_is_the_rankers_whole_catalog_in_chunks(tiny_bundle: Callable[..., Path]) -> None:
    model = load_model("mail", tiny_bundle("mail", "base"), SessionOptions(device="cpu"))
    catalog = model.bundle.catalog
    enc = encode(model.bundle.schema, catalog, "new-1", NEW_USER, (), CONTEXT)
    virtual = model.towers.virtual_behavior(enc.user_attrs)
    memo = ColdScores(model.all_rows, ColdScoreOptions(chunk=7))
    calls: list[int] = []

    async def score(rows: IntArray) -> FloatArray:
        calls.append(len(rows))
        return model.towers.score(enc, virtual, 1.0, rows)

    async def fill() -> None:
        key = memo_key(enc)
        assert not memo.admit(key) and memo.admit(key)
        memo.fill(key, score, virtual)
        assert not memo.admit(key)  # pending: not twice
        await memo.pending[key]

    asyncio.run(fill())
    assert calls == [min(7, len(catalog) - i) for i in range(0, len(catalog), 7)]
    remembered = memo.get(memo_key(enc))
    assert remembered is not None and remembered.scores[0] == -np.inf and not memo.pending
    assert remembered.virtual is virtual
    whole = model.towers.score(enc, virtual, 1.0, model.all_rows)
    assert np.allclose(remembered.scores[1:], whole, atol=1e-6)
    # another context (another hour) is another key
    other = encode(
        model.bundle.schema, catalog, "new-2", NEW_USER, (), {"timestamp": CONTEXT["timestamp"] + 3600}
    )
    assert memo.get(memo_key(other)) is None


def test_a_reload_stops_the_replaced_models_fills(tiny_bundle: Callable[..., Path]) -> None:
    """No request reads a replaced model's memo, so its fills under way stop at the swap."""
    path = tiny_bundle("mail", "base")

    async def scenario() -> ColdScores | None:
        registry = ModelRegistry(SessionOptions(device="cpu"), Metrics())
        try:
            registry.put(registry.load("mail", path))
            old = registry.get("mail")
            assert old.cold is not None
            never = asyncio.Event()

            async def score(rows: IntArray) -> FloatArray:
                await never.wait()  # a fill still under way when the reload comes
                raise AssertionError("the fill outlived its model")

            old.cold.fill(b"k", score, None)
            fill = old.cold.pending[b"k"]
            await asyncio.sleep(0)  # the fill starts and waits on its first chunk
            new, replaced = await registry.reload("mail", path)
            assert replaced is old and new is not old
            await asyncio.wait([fill], timeout=10)  # a hang guard: a fill left running never ends
            assert fill.cancelled() and not old.cold.pending  # (asyncio.run would cancel it later)
            return new.cold
        finally:
            registry.close()

    memo = asyncio.run(scenario())
    assert memo is not None and len(memo) == 0 and not memo.pending  # the new model's own, empty


def test_fills_run_one_at_a_time_and_leave_the_loop_to_requests() -> None:
    """However many keys are new at once, one fill's chunks run at a time, each followed by a pause
    `pace` times as long as the chunk, in which requests run."""
    memo = _memo(n=8, chunk=4, pace=3.0)
    events: list[str] = []

    def scorer(name: str) -> Callable[[IntArray], Any]:
        async def score(rows: IntArray) -> FloatArray:
            events.append(f"{name}{rows[0]}")
            end = time.perf_counter() + 0.01  # a chunk costs 10 ms of CPU
            while time.perf_counter() < end:
                pass
            return rows.astype(np.float32)

        return score

    async def request_loop(until: asyncio.Event, gaps: list[float]) -> None:
        last = time.perf_counter()
        while not until.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def run() -> list[float]:
        gaps: list[float] = []
        done = asyncio.Event()
        requests = asyncio.create_task(request_loop(done, gaps))
        memo.fill(b"a", scorer("a"), None)
        memo.fill(b"b", scorer("b"), None)
        await asyncio.gather(*memo.pending.values())
        done.set()
        await requests
        return gaps

    gaps = asyncio.run(run())
    assert events == ["a1", "a5", "b1", "b5"]  # a's chunks, then b's: never interleaved
    remembered = memo.get(b"b")
    assert remembered is not None and remembered.scores.tolist() == [-np.inf, *range(1, 9)]
    # between chunks the loop is free for about three chunks' time: most of its turns are short
    assert sum(g < 0.005 for g in gaps) > 10 * sum(g >= 0.005 for g in gaps)


def test_a_failed_fill_leaves_the_key_unfilled(caplog: pytest.LogCaptureFixture) -> None:
    memo = _memo()

    async def broken(rows: IntArray) -> FloatArray:
        raise RuntimeError("ranker down")

    async def fill() -> None:
        memo.fill(b"k", broken, None)
        await memo.pending[b"k"]

    asyncio.run(fill())
    assert memo.get(b"k") is None and not memo.pending
    assert "filling one key failed" in caplog.text


@pytest.fixture(scope="module")
def remembering(tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = start_live(tmp_path_factory.mktemp("remembering"), tiny_bundle)
    yield env
    env.close()


def _cold_counts(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        r: metric_value(text, "mailrec_cold_scores_total", variant="mail", result=r)
        for r in ("hit", "miss", "fill")
    }


def _ask(client: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"user_id": f"new-{uuid.uuid4().hex[:8]}", "attributes": NEW_USER, "context": CONTEXT, **body}
    r = client.post("/recommend", json=payload, headers={"X-Variant": "mail"})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert np.allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], atol=1e-6)
    assert a["virtual_weight"] == b["virtual_weight"] > 0 and a["cold_start"] and b["cold_start"]


def test_new_users_with_the_same_attributes_share_one_whole_catalog_pass(remembering: Live) -> None:
    catalog = load_bundle(remembering.bundles["mail"]).catalog
    given = catalog.ids[:: max(1, len(catalog) // 12)][:12]
    with remembering.client() as client:
        before = _cold_counts(client)
        first = _ask(client, k=10)  # a new key: a miss
        second = _ask(client, k=10)  # its second miss: a fill starts
        counts = _cold_counts(client)
        assert counts["miss"] - before["miss"] == 2 and counts["fill"] - before["fill"] == 1
        deadline = time.monotonic() + 30
        while _cold_counts(client)["hit"] == before["hit"]:  # the fill is off the request path
            assert time.monotonic() < deadline, "the fill never landed"
            third = _ask(client, k=10)
        third = _ask(client, k=10)
        with_candidates = _ask(client, candidates=given, k=5)
        after = _cold_counts(client)
        # a user with history is not cold: scored as before, not counted
        warm = _ask(client, history=[catalog.ids[0]], k=5)
        assert _cold_counts(client) == after
        described = {m["variant"]: m["cold_scores"] for m in client.get("/models").json()["models"]}
    _same_answer(first, second)
    _same_answer(first, third)  # the whole catalog either way (the tiny catalog has no stage)
    assert after["hit"] - before["hit"] >= 2
    assert after["fill"] - before["fill"] == 1
    scores = {i["item_id"]: i["score"] for i in third["items"]}
    assert all(i["item_id"] in given for i in with_candidates["items"])
    # the given candidates' scores are the same remembered pass's
    for item in with_candidates["items"]:
        assert item["item_id"] not in scores or abs(item["score"] - scores[item["item_id"]]) < 1e-6
    assert not warm["cold_start"]
    assert described == {"control": True, "mail": True}


def test_the_memo_can_be_turned_off(tiny_bundle: Callable[..., Path], tmp_path: Path) -> None:
    env = start_live(tmp_path, tiny_bundle, MAILREC_COLD_SCORES_MB="0")
    try:
        with env.client() as client:
            for _ in range(3):
                _ask(client, k=5)
            text = client.get("/metrics").text
            models = client.get("/models").json()["models"]
    finally:
        env.close()
    assert "mailrec_cold_scores_total{" not in text
    assert [m["cold_scores"] for m in models] == [False, False]
