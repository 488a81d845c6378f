"""Beyond one machine: three replicas of the service (`python -m service`, one worker each) share one
redis-server behind Debian's haproxy (round robin, health check GET /readyz), all on the loopback.

A user gets the same variant from every replica; a click counts once whichever replica it reaches;
the replicas' /metrics, summed, equal what the client sent through the load balancer. One
/admin/reload reaches every replica (service.rollout); a bundle that fails on the replicas leaves
each on its old model with the failure shown; a replica started later serves what was published.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.metrics import metric_value
from benchmarks.harness.processes import HAProxy, RedisServer, ServiceProcess
from service.cache import PUBLISH_SCRIPT
from service.contract import load_bundle
from service.experiments import Experiment, load_experiment
from service.rollout import Pointer, pointer_key
from tests.faults.test_clicks import click_body, feedback_counts, items, serve
from tests.faults.test_reload import corrupted_copy
from tests.service.conftest import ADMIN_TOKEN, NEW_USER, service_env, tiny_bundles

pytestmark = pytest.mark.slow  # three services and haproxy started, a few hundred requests

REPLICAS = 3
RECOMMENDATIONS = "mailrec_recommendations_total"
POLL_S = 0.5  # MAILREC_ROLLOUT_POLL_S of the replicas
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Replicas:
    redis: RedisServer
    services: dict[str, ServiceProcess]  # by haproxy's server name: r0, r1, r2
    lb: HAProxy
    experiment: Experiment
    prefix: str  # the replicas' MAILREC_REDIS_PREFIX
    env: dict[str, str]  # their settings (each adds its MAILREC_REPLICA_ID, its haproxy name)
    workdir: Path

    def client(self, name: str | None = None) -> httpx.Client:
        """A client of replica `name` directly, else of the load balancer."""
        url = self.lb.url if name is None else self.services[name].url
        return httpx.Client(base_url=url, timeout=30)

    def metrics(self) -> dict[str, str]:
        """Each replica's /metrics text, read from it directly."""
        return {name: httpx.get(f"{s.url}/metrics", timeout=10).text for name, s in self.services.items()}

    def feedback(self) -> dict[str, dict[str, float]]:
        """Each replica's feedback outcomes and clicks (`feedback_counts`)."""
        out = {}
        for name in self.services:
            with self.client(name) as c:
                out[name] = feedback_counts(c)
        return out


def summed(per_replica: dict[str, dict[str, float]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counts in per_replica.values():
        total.update(counts)
    return total


@pytest.fixture(scope="module")
def replicas(
    tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    experiments = write_experiment(tmp / "experiments.toml", tiny_bundles(tiny_bundle))
    redis_server = RedisServer().start()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    env = service_env(experiments, redis_server.url, prefix, MAILREC_ROLLOUT_POLL_S=str(POLL_S))
    services = [
        ServiceProcess({**env, "MAILREC_REPLICA_ID": f"r{i}"}, launcher=True, workdir=tmp)
        for i in range(REPLICAS)
    ]
    lb: HAProxy | None = None
    try:
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(ServiceProcess.start, services))
        lb = HAProxy([f"127.0.0.1:{s.port}" for s in services]).start()
        named = dict(zip(lb.servers, services, strict=True))
        yield Replicas(redis_server, named, lb, load_experiment(experiments), prefix, env, tmp)
    finally:
        if lb is not None:
            lb.close()
        for s in services:
            s.stop()
        redis_server.close()


def recommend(client: httpx.Client, user: str) -> httpx.Response:
    r = client.post("/recommend", json={"user_id": user, "attributes": NEW_USER, "k": 5})
    assert r.status_code == 200, r.text
    return r


def test_a_user_gets_the_same_variant_from_every_replica(replicas: Replicas) -> None:
    users = [f"same-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
    variants: dict[str, set[str]] = defaultdict(set)
    served_by: dict[str, set[str]] = defaultdict(set)
    with replicas.client() as lb:
        for user in users:
            for name in replicas.services:
                with replicas.client(name) as direct:
                    variants[user].add(recommend(direct, user).json()["variant"])
            for _ in range(REPLICAS):
                r = recommend(lb, user)
                variants[user].add(r.json()["variant"])
                served_by[user].add(r.headers[HAProxy.HEADER])
    expected = {user: replicas.experiment.assign(user)[0] for user in users}
    assert {user: variants[user] for user in users} == {user: {v} for user, v in expected.items()}
    assert set(expected.values()) == {"control", "mail"}  # both variants drawn: the check compares
    assert set().union(*served_by.values()) == set(replicas.services)
    assert all(len(names) > 1 for names in served_by.values()), served_by


def test_a_click_on_another_replica_counts_once(replicas: Replicas) -> None:
    a, b, c = replicas.services
    user = f"click-{uuid.uuid4().hex[:6]}"
    with replicas.client(a) as client:
        served = serve(client, user, k=5)
    first, second = items(served)[:2]
    before = replicas.feedback()
    for name, expect in ((b, "counted"), (c, "duplicate"), (a, "duplicate")):
        with replicas.client(name) as client:
            r = client.post("/feedback", json=click_body(served, first))
        assert r.status_code == 202 and r.json()["status"] == expect, (name, r.text)
    after = replicas.feedback()
    assert {n: after[n]["clicks"] - before[n]["clicks"] for n in after} == {a: 0, b: 1, c: 0}
    delta = summed(after) - summed(before)
    assert (delta["clicks"], delta["counted"], delta["duplicate"]) == (1, 1, 2)

    copies = 30  # of one more click, to every replica at once: one is counted, over all of them

    async def burst() -> list[httpx.Response]:
        body = click_body(served, second)
        clients = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in replicas.services.values()]
        try:
            posts = (ac.post("/feedback", json=body) for ac in clients for _ in range(copies))
            return await asyncio.gather(*posts)
        finally:
            for ac in clients:
                await ac.aclose()

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [202] * (copies * REPLICAS)
    statuses = Counter(r.json()["status"] for r in responses)
    assert statuses == {"counted": 1, "duplicate": copies * REPLICAS - 1}
    delta = summed(replicas.feedback()) - summed(after)
    assert (delta["clicks"], delta["counted"], delta["duplicate"]) == (1, 1, copies * REPLICAS - 1)
    history = replicas.redis.client().lrange(f"{replicas.prefix}:hist:{{{user}}}", 0, -1)
    assert sorted(history) == sorted([first.encode(), second.encode()])


def test_the_replicas_metrics_sum_to_what_the_load_balancer_was_sent(replicas: Replicas) -> None:
    sent = 480
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    before = replicas.metrics()
    lb_before = replicas.lb.stats()

    async def load() -> list[httpx.Response]:
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=replicas.lb.url, timeout=30) as ac:

            async def one(i: int) -> httpx.Response:
                async with gate:
                    body = {"user_id": f"{prefix}-{i}", "attributes": NEW_USER, "k": 5}
                    return await ac.post("/recommend", json=body)

            return await asyncio.gather(*(one(i) for i in range(sent)))

    responses = asyncio.run(load())
    after = replicas.metrics()
    lb_after = replicas.lb.stats()
    assert [r.status_code for r in responses] == [200] * sent
    ledger = Counter(r.headers[HAProxy.HEADER] for r in responses)

    def increase(name: str, **labels: str) -> dict[str, float]:
        return {
            n: metric_value(after[n], name, **labels) - metric_value(before[n], name, **labels) for n in after
        }

    counted = increase(RECOMMENDATIONS)
    answered = increase("mailrec_http_requests_total", route="/recommend", status="200")
    balanced = {n: int(lb_after[n]["stot"]) - int(lb_before[n]["stot"]) for n in lb_after}
    assert all(counted[n] > 0 for n in replicas.services), counted  # the load balancer used every one
    assert counted == answered == dict(ledger) == balanced
    assert sum(counted.values()) == sent


# --- one reload for all --------------------------------------------------------------------------


def models(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/models", timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def mail_state(url: str) -> dict[str, Any]:
    """The replica's own rollout state of variant mail: model_version, generation, error."""
    state: dict[str, Any] = models(url)["replica"]["variants"]["mail"]
    return state


def wait_for(replicas: dict[str, str], done: Callable[[dict[str, Any]], bool]) -> dict[str, float]:
    """Poll each replica's (name -> url) mail state until `done` holds for all of them (at most 30 s,
    every 20 ms); returns when each was first seen done, seconds from the call."""
    started = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < len(replicas) and time.monotonic() - started < 30:
        for name, url in replicas.items():
            if name not in seen and done(mail_state(url)):
                seen[name] = time.monotonic() - started
        time.sleep(0.02)
    assert set(seen) == set(replicas), {n: mail_state(u) for n, u in replicas.items()}
    return seen


def urls(replicas: Replicas) -> dict[str, str]:
    return {name: s.url for name, s in replicas.services.items()}


def test_one_reload_call_reaches_every_replica(replicas: Replicas, tiny_bundle: Callable[..., Path]) -> None:
    old = {name: mail_state(url)["model_version"] for name, url in urls(replicas).items()}
    assert len(set(old.values())) == 1
    _, publisher, _ = replicas.services
    din = tiny_bundle("mail", "din")
    with replicas.client(publisher) as client:
        r = client.post("/admin/reload", json={"variant": "mail", "bundle": str(din)}, headers=AUTH)
    assert r.status_code == 200, r.text
    new, generation = r.json()["model_version"], r.json()["rollout_generation"]
    assert new not in old.values() and isinstance(generation, int)

    seen = wait_for(urls(replicas), lambda s: s["model_version"] == new and s["generation"] == generation)
    print(  # noqa: T201 - the figure README quotes
        f"ROLLOUT converged on {REPLICAS} replicas in {max(seen.values()):.2f} s after the reload "
        f"answered (poll {POLL_S} s): " + ", ".join(f"{n} {t:.2f} s" for n, t in sorted(seen.items()))
    )
    for name, url in urls(replicas).items():  # each shows every replica on the new version
        listed = {s["replica"]: s["variants"]["mail"] for s in models(url)["replicas"]}
        assert set(listed) >= set(replicas.services), (name, listed)
        assert all(listed[n]["model_version"] == new for n in replicas.services), (name, listed)
    with replicas.client() as lb:  # and serves it, whichever replica haproxy picks
        served = [recommend_variant(lb, "mail") for _ in range(2 * REPLICAS)]
    assert {r.headers["X-Model-Version"] for r in served} == {new}
    assert {r.headers[HAProxy.HEADER] for r in served} == set(replicas.services)


def recommend_variant(client: httpx.Client, variant: str) -> httpx.Response:
    body = {"user_id": f"rollout-{uuid.uuid4().hex[:6]}", "attributes": NEW_USER, "k": 5}
    r = client.post("/recommend", json=body, headers={"X-Variant": variant})
    assert r.status_code == 200, r.text
    return r


def test_a_bundle_that_fails_leaves_every_replica_on_its_old_model_and_the_failure_visible(
    replicas: Replicas, tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    before = {name: mail_state(url) for name, url in urls(replicas).items()}
    serving = {s["model_version"] for s in before.values()}
    assert len(serving) == 1
    failures = {
        n: metric_value(text, "mailrec_model_reloads_total", variant="mail", result="failure")
        for n, text in replicas.metrics().items()
    }
    broken = corrupted_copy(tiny_bundle("mail", "din"), tmp_path / "broken")
    key = pointer_key(replicas.prefix, replicas.experiment.name, "mail")
    redis = replicas.redis.client()
    generation = int(redis.hget(key, "generation") or 0)

    # refused where it is published: nothing reaches the pointer
    a, *_ = replicas.services
    with replicas.client(a) as client:
        r = client.post("/admin/reload", json={"variant": "mail", "bundle": str(broken)}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"] == "bad_bundle", r.text
    assert int(redis.hget(key, "generation") or 0) == generation

    # a pointer to a bundle the replicas cannot load (as if the publisher had seen a sound copy):
    # written as /admin/reload writes it, each replica tries it and keeps its old model
    fields = Pointer("mail", 0, str(broken), "0123456789ab", "-", "now", "test").fields()
    published = redis.eval(PUBLISH_SCRIPT, 1, key, *[p for pair in fields.items() for p in pair])
    redis.close()
    assert published == generation + 1
    wait_for(urls(replicas), lambda s: s["generation"] == published)
    after = {name: mail_state(url) for name, url in urls(replicas).items()}
    for name, state in after.items():
        assert state["model_version"] in serving, (name, state)
        assert state["error"]["generation"] == published, (name, state)
        assert "checksum mismatch" in state["error"]["detail"], (name, state)
    for n, text in replicas.metrics().items():
        now = metric_value(text, "mailrec_model_reloads_total", variant="mail", result="failure")
        assert now == failures[n] + (2 if n == a else 1), n  # a refused the reload as well
    with replicas.client() as lb:
        served = [recommend_variant(lb, "mail") for _ in range(REPLICAS)]
    assert {r.headers["X-Model-Version"] for r in served} == serving


def test_a_replica_started_after_the_publish_serves_the_published_version(
    replicas: Replicas, tiny_bundle: Callable[..., Path]
) -> None:
    a, *_ = replicas.services
    with replicas.client(a) as client:
        r = client.post(
            "/admin/reload", json={"variant": "mail", "bundle": str(tiny_bundle("mail", "din"))}, headers=AUTH
        )
    assert r.status_code == 200, r.text
    published, generation = r.json()["model_version"], r.json()["rollout_generation"]
    own = load_bundle(replicas.experiment.variants[1].bundle).version  # what the file names
    assert replicas.experiment.variants[1].name == "mail" and published != own
    late = ServiceProcess(
        {**replicas.env, "MAILREC_REPLICA_ID": "late"}, launcher=True, workdir=replicas.workdir
    )
    try:
        late.start()  # ready only once it applied the pointer
        state = mail_state(late.url)
        assert (state["model_version"], state["generation"]) == (published, generation)
        with httpx.Client(base_url=late.url, timeout=30) as client:
            assert recommend_variant(client, "mail").headers["X-Model-Version"] == published
        assert "late" in {s["replica"] for s in models(replicas.services[a].url)["replicas"]}
    finally:
        late.stop()
