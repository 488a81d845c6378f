"""The Redis store against a real redis-server, in process: the breaker's trial, stale connections,
impression records."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks.harness.processes import RedisServer
from service.cache import CircuitBreaker, Impression, RedisStore
from service.metrics import Metrics
from service.resp import RespClient

IMP = Impression("exp", "mail", "hash", "v1", "user-1", ["1", "2", "3"])


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.close()


def make_store(url: str, budget_s: float = 0.5, reset_s: float = 0.05) -> RedisStore:
    return RedisStore(
        RespClient(url, connect_timeout=budget_s),
        "t",
        Metrics(),
        budget_s,
        budget_s,
        CircuitBreaker(3, reset_s),
        vector_ttl_s=60,
        window_s=60,
        history_max=10,
    )


async def close(store: RedisStore) -> None:
    store.pipe.close()


def test_a_cancelled_trial_call_does_not_keep_the_breaker_open(server: RedisServer) -> None:
    """Issue 17, defect 1: the half-open trial is cancelled (client gone, shutdown); the next
    call after the reset time must get a trial of its own, and close the breaker."""

    async def run() -> None:
        store = make_store(server.url)
        for _ in range(3):
            store.breaker.failure()
        assert store.breaker.is_open
        await asyncio.sleep(0.06)  # past reset_s: the next call is the trial
        server.pause(300)  # the trial waits on Redis ...
        trial = asyncio.ensure_future(store.ping())
        await asyncio.sleep(0.05)
        trial.cancel()  # ... and is cancelled there
        with pytest.raises(asyncio.CancelledError):
            await trial
        await asyncio.sleep(0.4)  # Redis answers again
        assert await store.ping()
        assert not store.breaker.is_open
        await close(store)

    asyncio.run(run())


def test_a_dropped_connection_to_a_healthy_redis_is_made_again(server: RedisServer) -> None:
    """Issue 17, defect 4: Redis closed every connection (a restart, a proxy, an idle timeout) and
    the service has not seen it yet; the next calls are made on a new connection, and the breaker
    counts nothing."""

    async def run() -> None:
        store = make_store(server.url, budget_s=0.5)
        budget = store.budget()
        assert await store.save_impression("imp-1", IMP, budget)
        assert (await store.load_impression("imp-1", budget))[1]
        with server.client() as admin:  # blocking: the loop cannot see the connections close
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        imp, answered = await store.load_impression("imp-1", store.budget())
        assert answered and imp == IMP
        with server.client() as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await store.record_click("imp-1", IMP, "2", store.budget()) is True
        with server.client() as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        vector, clicks, answered = await store.read_user(None, "user-1", store.budget())
        assert answered and clicks == ["2"]
        assert store.breaker.failures == 0 and not store.breaker.is_open
        await close(store)

    asyncio.run(run())


def test_a_second_impression_record_never_replaces_the_first(server: RedisServer) -> None:
    """Issue 17, defect 2: impression records are written with SET NX."""

    async def run() -> None:
        store = make_store(server.url)
        other = Impression("exp", "control", "hash", "v2", "user-2", ["9"])
        assert await store.save_impression("imp-9", IMP, store.budget())
        assert await store.save_impression("imp-9", other, store.budget())  # answered, not written
        assert (await store.load_impression("imp-9", store.budget()))[0] == IMP
        await close(store)

    asyncio.run(run())
