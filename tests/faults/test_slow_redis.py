"""Redis answers slowly (a delaying TCP proxy between the service and redis-server) under load:
each request still waits for Redis at most its budget, the breaker opens, and it closes again
once Redis is quick."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.metrics import metric_value
from benchmarks.harness.processes import RedisServer
from tests.faults.load import Background, lua_body_script
from tests.faults.proxy import DelayProxy
from tests.faults.test_redis_faults import CONNECTIONS, LOAD_USER, resumed_after
from tests.service.conftest import Live, start_live

pytestmark = pytest.mark.slow  # seconds of load through a delaying proxy

BUDGET_MS = 20
DELAY_MS = 250  # each Redis reply this late: far past the budget
RESET_S = 5.0  # the breaker's default
SLOW_S = 6.0  # longer than RESET_S: a trial call meets the slow Redis and opens the breaker again
LOAD_S = 18


@pytest.fixture()
def slow(tiny_bundle: Callable[..., Path], tmp_path: Path) -> Iterator[tuple[Live, DelayProxy]]:
    proxies: list[DelayProxy] = []

    def via(redis: RedisServer) -> str:
        proxies.append(DelayProxy(redis.port).start())
        return proxies[0].url

    env = start_live(tmp_path, tiny_bundle, via, MAILREC_REDIS_BUDGET_MS=str(BUDGET_MS))
    yield env, proxies[0]
    env.service.stop()
    proxies[0].close()
    env.redis.close()


def breaker_open(client: httpx.Client) -> bool:
    return metric_value(client.get("/metrics").text, "mailrec_circuit_breaker_open") == 1


def test_redis_answering_slowly_through_a_delaying_proxy(
    slow: tuple[Live, DelayProxy], tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    live, proxy = slow
    with live.client() as client:
        assert client.post("/recommend", json=LOAD_USER).json()["impression_id"] is not None
        load = Background(
            live.url + "/recommend", lua_body_script(json.dumps(LOAD_USER)), CONNECTIONS, LOAD_S, tmp_path
        )
        time.sleep(2)
        assert not breaker_open(client)
        proxy.delay_s = DELAY_MS / 1000
        slowed = time.monotonic()
        opened_s = None
        while time.monotonic() - slowed < SLOW_S:
            if opened_s is None and breaker_open(client):
                opened_s = time.monotonic() - slowed
            time.sleep(0.1)
        proxy.delay_s = 0.0
        quick = time.monotonic()
        closed_s = None
        while closed_s is None and time.monotonic() - quick < 30:
            if not breaker_open(client):
                closed_s = time.monotonic() - quick
            time.sleep(0.1)
        hit_s, click_s = resumed_after(client, quick)
        run = load.join()
    record(
        f"Redis answering {DELAY_MS} ms late (a delaying TCP proxy) for {SLOW_S:.0f} s under /recommend load",
        "the budget held; the breaker opens, and closes once Redis is quick",
        f"{run.requests} requests at {CONNECTIONS} connections over {LOAD_S} s, {run.non_2xx} non-2xx, "
        f"{run.socket_errors} socket errors; whole run p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
        f"max {run.max_ms:.0f} ms (a request that waited for a reply would take {DELAY_MS} ms); breaker "
        f"open {opened_s:.1f} s after the delay began, closed {closed_s:.1f} s after it ended (reset "
        f"{RESET_S:.0f} s); first cache hit {hit_s:.1f} s and first counted click {click_s:.1f} s "
        "after it ended",
    )
    assert run.requests > 0 and run.non_2xx == 0 and run.socket_errors == 0, run.statuses
    assert run.max_ms < DELAY_MS, "a request waited for Redis past its budget"
    assert opened_s is not None, "the breaker never opened"
    assert closed_s is not None, "the breaker did not close once Redis was quick"
