"""The rollout watcher in process: two replicas' `Rollout`s (each its own registry and store) on one
real redis-server; tiny bundles loaded for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.metrics import metric_value
from benchmarks.harness.processes import RedisServer
from service.bundles import ModelRegistry
from service.cache import RedisStore
from service.experiments import Experiment, load_experiment
from service.inference import SessionOptions
from service.metrics import Metrics
from service.rollout import Pointer, Rollout, pointer_key
from tests.faults.test_reload import corrupted_copy
from tests.service.conftest import tiny_bundles
from tests.service.test_store import make_store

POLL_S = 0.1
FAILURES = "mailrec_model_reloads_total"


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.close()


@pytest.fixture()
def experiment(tiny_bundle: Callable[..., Path], tmp_path: Path) -> Experiment:
    return load_experiment(write_experiment(tmp_path / "experiments.toml", tiny_bundles(tiny_bundle)))


@dataclass
class Replica:
    rollout: Rollout
    store: RedisStore

    @property
    def metrics(self) -> Metrics:
        return self.rollout.metrics

    def version(self, variant: str = "mail") -> str:
        return self.rollout.registry.get(variant).version

    def reloads(self, result: str) -> float:
        return metric_value(self.metrics.exposition().decode(), FAILURES, variant="mail", result=result)

    def close(self) -> None:
        self.store.pipe.close()
        self.rollout.registry.close()


def replica(name: str, experiment: Experiment, url: str) -> Replica:
    """A replica's rollout, its registry loaded with the experiment's bundles."""
    store = make_store(url)
    registry = ModelRegistry(SessionOptions(device="cpu"), store.metrics)
    for v in experiment.variants:
        registry.put(registry.load(v.name, v.bundle, v.kind))
    return Replica(Rollout(name, experiment, registry, store, store.metrics, POLL_S), store)


def run_with(experiment: Experiment, url: str, names: list[str], body: Callable[..., object]) -> None:
    """`body(*replicas)` (a coroutine function) with the named replicas, closed afterwards."""
    replicas = [replica(n, experiment, url) for n in names]

    async def main() -> None:
        try:
            await body(*replicas)  # type: ignore[misc]
        finally:
            for r in replicas:
                await r.rollout.stop()
                r.close()

    asyncio.run(main())


def test_a_published_bundle_is_applied_by_the_other_replica_once(
    server: RedisServer, experiment: Experiment, tiny_bundle: Callable[..., Path]
) -> None:
    din = tiny_bundle("mail", "din")

    async def body(a: Replica, b: Replica) -> None:
        old = b.version()
        new, _ = await a.rollout.registry.reload("mail", din)
        assert new.version != old
        assert await a.rollout.publish(new) == 1
        assert await b.rollout.poll()
        assert b.version() == new.version and b.rollout.variants["mail"].generation == 1
        assert b.reloads("success") == 1
        assert await b.rollout.poll()  # the same generation: nothing loaded again
        assert b.reloads("success") == 1
        assert await a.rollout.poll()  # the publisher has it already: no reload
        assert a.reloads("success") == 0
        states = await a.rollout.replicas()
        assert states is not None
        assert [s["replica"] for s in states] == ["a", "b"]
        assert {s["variants"]["mail"]["model_version"] for s in states} == {new.version}
        assert {s["variants"]["mail"]["generation"] for s in states} == {1}
        assert all(s["variants"]["control"]["generation"] == 0 for s in states)
        # a second publish of the first bundle rolls back: generation 2
        back, _ = await a.rollout.registry.reload("mail", experiment.variants[1].bundle)
        assert await a.rollout.publish(back) == 2
        assert await b.rollout.poll() and b.version() == old

    run_with(experiment, server.url, ["a", "b"], body)


def test_a_bundle_that_fails_on_a_replica_leaves_its_old_model_and_the_failure_visible(
    server: RedisServer, experiment: Experiment, tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    broken = corrupted_copy(tiny_bundle("mail", "din"), tmp_path / "broken")
    other = tiny_bundle("mail", "din")

    async def publish(store: RedisStore, bundle: Path, version: str) -> int | None:
        fields = Pointer("mail", 0, str(bundle), version, "x", "now", "operator").fields()
        return await store.publish_rollout(pointer_key(store.prefix, experiment.name, "mail"), fields)

    async def body(b: Replica) -> None:
        old = b.version()
        assert await publish(b.store, broken, "0123456789ab") == 1
        assert await b.rollout.poll()
        assert b.version() == old and b.reloads("failure") == 1
        error = b.rollout.variants["mail"].error
        assert error is not None and error["generation"] == 1 and "checksum mismatch" in error["detail"]
        assert await b.rollout.poll()  # handled: not tried again every poll
        assert b.reloads("failure") == 1
        (state,) = await b.rollout.replicas() or []
        assert state["variants"]["mail"]["error"]["generation"] == 1
        assert state["variants"]["mail"]["model_version"] == old

        # a valid bundle that is not the published version here: refused too
        assert await publish(b.store, other, "0123456789ab") == 2
        assert await b.rollout.poll()
        assert b.version() == old and b.reloads("failure") == 2
        error = b.rollout.variants["mail"].error
        assert error is not None and "not the published 0123456789ab" in error["detail"]

    run_with(experiment, server.url, ["b"], body)


def test_with_redis_down_the_watcher_does_nothing_and_a_reload_stays_local(
    server: RedisServer, experiment: Experiment, tiny_bundle: Callable[..., Path]
) -> None:
    async def body(a: Replica) -> None:
        old = a.version()
        server.stop()
        assert not await a.rollout.poll()
        assert a.version() == old
        new, _ = await a.rollout.registry.reload("mail", tiny_bundle("mail", "din"))
        assert await a.rollout.publish(new) is None  # served here, published nowhere
        assert a.version() == new.version and a.rollout.variants["mail"].generation == 0
        assert await a.rollout.replicas() is None

    run_with(experiment, server.url, ["a"], body)


def test_the_background_watcher_applies_a_publish_and_stops_when_cancelled(
    server: RedisServer, experiment: Experiment, tiny_bundle: Callable[..., Path]
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        b.rollout.start()
        new, _ = await a.rollout.registry.reload("mail", tiny_bundle("mail", "din"))
        await a.rollout.publish(new)
        deadline = time.monotonic() + 10
        while b.version() != new.version and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S / 2)
        assert b.version() == new.version
        task = b.rollout._task
        await b.rollout.stop()
        assert task is not None and task.cancelled()

    run_with(experiment, server.url, ["a", "b"], body)


def test_a_replica_that_stops_reporting_drops_out_after_its_ttl(
    server: RedisServer, experiment: Experiment
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        assert await a.rollout.report() and await b.rollout.report()
        listed = await a.rollout.replicas()
        assert listed is not None and [s["replica"] for s in listed] == ["a", "b"]
        deadline = time.monotonic() + 3 * a.rollout.ttl_s
        while time.monotonic() < deadline:  # b is gone: only a keeps reporting
            await asyncio.sleep(POLL_S)
            assert await a.rollout.report()
            listed = await a.rollout.replicas()
            if listed is not None and [s["replica"] for s in listed] == ["a"]:
                break
        assert listed is not None and [s["replica"] for s in listed] == ["a"]
        with server.client() as c:  # b's key expired; the index lists a alone
            assert {k.decode() for k in c.keys("t:replica*")} == {"t:replica:a", "t:replicas"}
            assert c.zrange("t:replicas", 0, -1) == [b"a"]

    run_with(experiment, server.url, ["a", "b"], body)


def test_an_unreadable_pointer_is_skipped() -> None:
    assert Pointer.from_hash({}) is None
    assert Pointer.from_hash({"variant": "mail", "generation": "x"}) is None
    full = Pointer("mail", 3, "/b", "v", "s", "t", "r")
    assert Pointer.from_hash({**full.fields(), "generation": "3"}) == full
