"""Redis killed, stalled, emptied, and the breaker's trial cancelled, under load from wrk."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.metrics import metric_value
from benchmarks.harness.processes import RedisServer
from tests.faults.load import Background, lua_body_script
from tests.service.conftest import NEW_USER, Live
from tests.service.test_store import make_store

LOAD_USER = {"user_id": "fault-load-user", "attributes": NEW_USER}
CONNECTIONS = 8


def cache_hits(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "mailrec_cache_requests_total", result="hit")


def kill(redis: RedisServer) -> None:
    """SIGKILL: no goodbye to the clients (the port stays ours for the restart)."""
    assert redis.proc is not None
    redis.proc.kill()
    redis.proc = None


def until_redis_answers(client: httpx.Client, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while client.get("/readyz").json()["redis"] != "up":
        assert time.monotonic() < deadline, "Redis never came back for the service"
        time.sleep(0.2)


def resumed_after(client: httpx.Client, restarted: float, limit_s: float = 60) -> tuple[float, float]:
    """Seconds from the restart until (a cache hit, a counted click that warms its user)."""
    hit_at = click_at = None
    user = f"resume-{uuid.uuid4().hex[:6]}"
    while (hit_at is None or click_at is None) and time.monotonic() - restarted < limit_s:
        hits = cache_hits(client)
        r = client.post("/recommend", json=LOAD_USER, headers={"X-Variant": "mail"})
        assert r.status_code == 200
        if hit_at is None and cache_hits(client) > hits:
            hit_at = time.monotonic() - restarted
        served = client.post("/recommend", json={"user_id": user, "attributes": NEW_USER, "k": 3}).json()
        if click_at is None and served["impression_id"] is not None:
            body = {"impression_id": served["impression_id"], "item_id": served["items"][0]["item_id"]}
            click = client.post("/feedback", json={**body, "event": "click"})
            again = client.post("/recommend", json={"user_id": user, "attributes": NEW_USER}).json()
            if click.status_code == 202 and again["cold_start"] is False:
                click_at = time.monotonic() - restarted
        time.sleep(0.1)
    assert hit_at is not None and click_at is not None, (hit_at, click_at)
    return hit_at, click_at


@pytest.mark.slow  # seconds of load around the fault
def test_redis_killed_for_3_s_under_load_then_restarted(
    live: Live, tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    with live.client() as client:
        until_redis_answers(client)
        client.post("/recommend", json=LOAD_USER, headers={"X-Variant": "mail"})
        script = lua_body_script(json.dumps(LOAD_USER))
        load = Background(live.url + "/recommend", script, CONNECTIONS, 7, tmp_path)
        time.sleep(2)
        kill(live.single)
        time.sleep(3)
        live.single.start()  # same port, empty
        restarted = time.monotonic()
        run = load.join()
        hit_s, click_s = resumed_after(client, restarted)
    record(
        "Redis killed (SIGKILL) for 3 s under /recommend load, then restarted empty",
        "0 non-2xx on /recommend; p99 <= budget + 15 ms; cache hits and history resume within 5 s",
        f"{run.requests} requests at {CONNECTIONS} connections over 7 s, {run.non_2xx} non-2xx, "
        f"{run.socket_errors} socket errors; whole run p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
        f"max {run.max_ms:.0f} ms; first cache hit {hit_s:.1f} s and first counted click {click_s:.1f} s "
        "after the restart (breaker reset 5 s)",
    )
    assert run.requests > 0 and run.non_2xx == 0 and run.socket_errors == 0, run.statuses


@pytest.mark.slow  # seconds of load around the fault
def test_redis_stalled_for_3_s_under_load(
    live: Live, tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    with live.client() as client:
        until_redis_answers(client)
        script = lua_body_script(json.dumps(LOAD_USER))
        load = Background(live.url + "/recommend", script, CONNECTIONS, 6, tmp_path)
        time.sleep(1.5)
        live.single.pause(3000)
        run = load.join()
        until_redis_answers(client)
        hit_s, click_s = resumed_after(client, time.monotonic())
    record(
        "Redis stalled 3 s (CLIENT PAUSE ALL) under /recommend load",
        "0 non-2xx; no request waits more than the budget on Redis",
        f"{run.requests} requests at {CONNECTIONS} connections over 6 s, {run.non_2xx} non-2xx; "
        f"whole run p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, max {run.max_ms:.0f} ms; "
        f"after the stall: cache hit in {hit_s:.1f} s, counted click in {click_s:.1f} s",
    )
    assert run.requests > 0 and run.non_2xx == 0 and run.socket_errors == 0, run.statuses


def test_redis_restarted_with_data_lost_between_impression_and_click(
    live: Live, record: Callable[[str, str, str], None]
) -> None:
    with live.client() as client:
        until_redis_answers(client)
        served = client.post("/recommend", json={"user_id": "lost-user", "attributes": NEW_USER}).json()
        assert served["impression_id"] is not None
        live.single.stop()
        live.single.start()  # empty
        body = {"impression_id": served["impression_id"], "item_id": served["items"][0]["item_id"]}
        click = client.post("/feedback", json={**body, "event": "click"})
    record(
        "Redis restarted, data lost, between an impression and its click",
        "the click is a clean 404, never a 5xx",
        f"{click.status_code} {click.json()['error']}",
    )
    assert click.status_code == 404 and click.json()["error"] == "unknown_request", click.text


def test_the_same_x_request_id_from_two_users(live: Live, record: Callable[[str, str, str], None]) -> None:
    with live.client() as client:
        until_redis_answers(client)
        users = [f"same-rid-{n}-{uuid.uuid4().hex[:6]}" for n in "ab"]
        headers = {"X-Request-Id": "shared-correlation-id-1"}
        served = [
            client.post(
                "/recommend", json={"user_id": u, "attributes": NEW_USER, "k": 5}, headers=headers
            ).json()
            for u in users
        ]
        clicks = [
            client.post(
                "/feedback",
                json={
                    "impression_id": s["impression_id"],
                    "item_id": s["items"][0]["item_id"],
                    "event": "click",
                },
            ).json()
            for s in served
        ]
    histories = [live.redis.client().lrange(f"{live.prefix}:hist:{{{u}}}", 0, -1) for u in users]
    own = [h == [s["items"][0]["item_id"].encode()] for h, s in zip(histories, served, strict=True)]
    record(
        "the same X-Request-Id sent by two users, then each clicks",
        "each click credited to its own user and variant",
        f"clicks {[c['status'] for c in clicks]}, variants {[c['variant'] for c in clicks]} "
        f"(served {[s['variant'] for s in served]}), each user's history holds its own click: {all(own)}",
    )
    assert [c["status"] for c in clicks] == ["counted", "counted"]
    assert [c["variant"] for c in clicks] == [s["variant"] for s in served] and all(own)


def test_the_breakers_trial_call_cancelled(record: Callable[[str, str, str], None]) -> None:
    """In process (RedisStore on a real redis-server): over HTTP nothing cancels a handler under
    uvicorn on demand; a shutdown or a client gone does it in production."""
    server = RedisServer().start()

    async def run() -> tuple[bool, bool]:
        store = make_store(server.url, reset_s=0.05)
        for _ in range(3):
            store.breaker.failure()
        await asyncio.sleep(0.06)
        server.pause(300)
        trial = asyncio.ensure_future(store.ping())
        await asyncio.sleep(0.05)
        trial.cancel()
        await asyncio.gather(trial, return_exceptions=True)
        await asyncio.sleep(0.4)
        answered = await store.ping()
        store.pipe.close()
        return answered, store.breaker.is_open

    try:
        answered, still_open = asyncio.run(run())
    finally:
        server.close()
    record(
        "the breaker's trial call cancelled (in process, real redis-server)",
        "the breaker closes once Redis answers again",
        f"next call answered: {answered}; breaker open after it: {still_open}",
    )
    assert answered and not still_open
