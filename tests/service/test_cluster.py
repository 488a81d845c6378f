"""The black-box API tests on a real Redis Cluster (3 masters, 3 replicas, started here), the
service pointed at it with MAILREC_REDIS_CLUSTER=1.

The tests are test_api's own, imported: collected in this module they get this module's `live`,
a service on the cluster instead of on one redis-server (recommend, A/B stickiness, feedback
exactly once, warm-up by clicks, cache hits and single-flight, the impression record's TTL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import RedisClusterProcesses, ServiceProcess
from service.resp import ClusterClient, Reply
from tests.service.conftest import NEW_USER, Live, service_env, tiny_bundles
from tests.service.test_api import (  # noqa: F401 - collected here again, on the cluster
    test_a_cold_user_with_clicks_is_no_longer_cold,
    test_click_is_counted_once_and_credited_to_the_serving_variant,
    test_concurrent_misses_for_one_key_are_computed_once,
    test_feedback_errors,
    test_recommend_for_a_new_user,
    test_same_user_same_variant_over_1000_calls,
    test_the_same_x_request_id_from_two_users_credits_each_click_to_its_own_user,
    test_virtual_behavior_is_cached_with_the_model_version,
)

CLUSTER = {"MAILREC_REDIS_CLUSTER": "1"}


def start_cluster_live(tmp: Path, bundle_factory: Callable[..., Path], **env: str) -> Live:
    """The service on a Redis Cluster of its own (MAILREC_REDIS_CLUSTER=1, the URL of one node)."""
    experiments = write_experiment(tmp / "experiments.toml", tiny_bundles(bundle_factory))
    cluster = RedisClusterProcesses().start()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        service = ServiceProcess(service_env(experiments, cluster.url, prefix, **{**env, **CLUSTER}))
        service.start()
    except Exception:
        cluster.close()
        raise
    return Live(service, cluster, prefix, tiny_bundles(bundle_factory))


@pytest.fixture(scope="module")
def live(tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = start_cluster_live(tmp_path_factory.mktemp("cluster"), tiny_bundle)
    yield env
    env.close()


def test_one_requests_keys_live_on_different_masters_and_the_click_script_on_its_users_slot(
    live: Live, client: httpx.Client
) -> None:
    """The user read pipelines a vector key and a history key that sit in different slots (here
    on different masters): both are answered; the click script's two keys share the user's slot."""
    assert isinstance(live.redis, RedisClusterProcesses)
    cluster = live.redis
    assert client.get("/readyz").json()["redis"] == "up"
    # a never-seen user's vector is made by, and keyed with, the cold checkpoint if the bundle has one
    mail = next(m for m in client.get("/models").json()["models"] if m["variant"] == "mail")
    for i in range(40):  # a user whose history key's master is not the vector key's
        user = f"split-{i}"
        served = client.post(
            "/recommend",
            json={"user_id": user, "attributes": NEW_USER, "k": 3},
            headers={"X-Variant": "mail"},
        ).json()
        version = (mail["cold_checkpoint"] or {}).get("model_version", served["model_version"])
        vkeys = list(cluster.client().scan_iter(f"{live.prefix}:vb:{version}:*", count=1000))
        history = f"{live.prefix}:hist:{{{user}}}"
        if vkeys and cluster.master_for(vkeys[0].decode()).port != cluster.master_for(history).port:
            break
    else:
        pytest.fail("no user's history key on another master than the vector key in 40 tries")
    clicked = served["items"][0]["item_id"]
    click = {"impression_id": served["impression_id"], "item_id": clicked, "event": "click"}
    assert client.post("/feedback", json=click).json()["status"] == "counted"
    assert cluster.client().lrange(history, 0, -1) == [clicked.encode()]
    again = client.post(
        "/recommend", json={"user_id": user, "attributes": NEW_USER}, headers={"X-Variant": "mail"}
    ).json()
    assert again["cold_start"] is False  # the read of both keys, each from its master, was answered


def test_the_cluster_client_follows_moved_from_a_stale_slot_map(live: Live) -> None:
    """In process: every slot wrongly believed to be on one master; the commands of one call that
    land on the wrong master are answered MOVED, sent again where they belong, and the slot map
    read again; the replies come back in the call's order."""
    assert isinstance(live.redis, RedisClusterProcesses)
    cluster = live.redis
    keys = [f"{live.prefix}:moved:{i}" for i in range(12)]
    with cluster.client() as rc:
        for key in keys:
            rc.set(key, key)
    masters = {cluster.master_for(k).port for k in keys}
    assert len(masters) > 1  # 12 keys over 3 masters

    async def run() -> tuple[list[Reply], bool]:
        client = ClusterClient(cluster.url, connect_timeout=1.0)
        await client.refresh()
        wrong = ("127.0.0.1", min(masters))
        client.slots = [wrong] * len(client.slots)
        replies = await client.call([("GET", k) for k in keys]).future
        fixed = client.slots[key_slot(keys[0].encode())] == ("127.0.0.1", cluster.master_for(keys[0]).port)
        client.close()
        return replies, fixed

    replies, fixed = asyncio.run(run())
    assert replies == [k.encode() for k in keys]
    assert fixed


def test_a_cluster_url_with_a_database_is_refused() -> None:
    with pytest.raises(ValueError, match="database 0"):
        ClusterClient("redis://127.0.0.1:7000/2", connect_timeout=1.0)
