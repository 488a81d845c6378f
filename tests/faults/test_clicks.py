"""Clicks under load on a healthy Redis: none refused, each counted once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.metrics import metric_value
from tests.faults.load import lua_body_script, lua_string, run_wrk
from tests.service.conftest import NEW_USER, Live

CLICK_KEY = "impression_id"  # the id /feedback credits, as /recommend returns it


def serve(client: httpx.Client, user: str, k: int = 10, **headers: str) -> dict[str, object]:
    r = client.post("/recommend", json={"user_id": user, "attributes": NEW_USER, "k": k}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def click_body(served: dict[str, object], item: str) -> dict[str, str]:
    return {CLICK_KEY: str(served[CLICK_KEY]), "item_id": item, "event": "click"}


def items(served: dict[str, object]) -> list[str]:
    return [i["item_id"] for i in served["items"]]  # type: ignore[attr-defined]


def feedback_counts(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    out = {
        r: metric_value(text, "mailrec_feedback_total", result=r)
        for r in ("counted", "duplicate", "store_down")
    }
    out["clicks"] = metric_value(text, "mailrec_clicks_total")
    return out


def settled_counts(client: httpx.Client) -> dict[str, float]:
    """`feedback_counts` once the requests wrk left in flight are done (two equal reads)."""
    last = feedback_counts(client)
    for _ in range(50):
        time.sleep(0.2)
        now = feedback_counts(client)
        if now == last:
            return now
        last = now
    return last


@pytest.mark.slow  # 10 s of wrk
def test_distinct_clicks_at_64_connections_are_all_counted_once(
    live: Live, tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    prefix = f"fb64-{uuid.uuid4().hex[:6]}"
    with live.client() as client:
        served = [serve(client, f"{prefix}-{i}", k=100) for i in range(400)]
        pairs = [(str(s[CLICK_KEY]), item) for s in served for item in items(s)]
        before = feedback_counts(client)
        entries = ",\n".join(f"{{{lua_string(r)}, {lua_string(i)}}}" for r, i in pairs)
        request_lua = (
            f"clicks = {{\n{entries}\n}}\nn = 0\n"
            "function request()\n"
            "  n = n + 1\n"
            "  local c = clicks[(n - 1) % #clicks + 1]\n"
            f'  local body = string.format(\'{{"{CLICK_KEY}": "%s", "item_id": "%s", '
            '"event": "click"}\', c[1], c[2])\n'
            '  return wrk.format("POST", "/feedback", nil, body)\n'
            "end\n"
        )
        run = run_wrk(live.url + "/feedback", lua_body_script(request_lua=request_lua), 64, 10, tmp_path)
        after = settled_counts(client)
    delta = {k: after[k] - before[k] for k in after}
    r = live.redis.client()
    markers = sum(1 for _ in r.scan_iter(f"{live.prefix}:clk:{{{prefix}-*", count=1000))
    history = sum(int(r.llen(f"{live.prefix}:hist:{{{prefix}-{i}}}")) for i in range(400))
    record(
        "/feedback, 64 connections, 10 s, distinct clicks, healthy Redis",
        "0 refused; every click counted once",
        f"{run.requests} requests ({run.rps:.0f}/s), {run.non_2xx} non-2xx "
        f"({int(delta['store_down'])} store_down), {run.socket_errors} socket errors; "
        f"{int(delta['counted'])} counted = {markers} markers = {history} history entries; "
        f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms",
    )
    assert run.requests > 0 and run.socket_errors == 0
    assert run.non_2xx == 0 and delta["store_down"] == 0, run.statuses
    assert delta["counted"] == delta["clicks"] == markers == history
    assert delta["counted"] + delta["duplicate"] >= run.requests  # wrk stops with some in flight
    assert delta["counted"] >= min(run.requests, len(pairs))


def test_200_concurrent_copies_of_one_click_count_once(
    live: Live, record: Callable[[str, str, str], None]
) -> None:
    user = f"copies-{uuid.uuid4().hex[:6]}"
    with live.client() as client:
        served = serve(client, user, k=5)
        before = feedback_counts(client)
    body = click_body(served, items(served)[0])

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=limits) as ac:
            return await asyncio.gather(*(ac.post("/feedback", json=body) for _ in range(200)))

    responses = asyncio.run(burst())
    with live.client() as client:
        after = feedback_counts(client)
    statuses = [r.status_code for r in responses]
    counted = sum(1 for r in responses if r.status_code == 202 and r.json()["status"] == "counted")
    history = live.redis.client().lrange(f"{live.prefix}:hist:{{{user}}}", 0, -1)
    record(
        "200 concurrent copies of one click",
        "counted exactly once in Redis and in /metrics; none refused",
        f"{statuses.count(202)} of 200 answered 202, {counted} counted; "
        f"clicks_total +{after['clicks'] - before['clicks']:.0f}; history {len(history)} entry",
    )
    assert statuses == [202] * 200
    assert counted == 1 and after["clicks"] - before["clicks"] == 1
    assert after["counted"] - before["counted"] == 1 and after["duplicate"] - before["duplicate"] == 199
    assert history == [items(served)[0].encode()]
