"""A Redis Cluster master killed under load (benchmarks/cluster_failover.py's scenario): the service
answers 2xx throughout, a replica takes over, and then the cache and clicks work again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.cluster_failover import SERVICE_ENV, run
from benchmarks.harness.processes import RedisClusterProcesses
from tests.service.test_cluster import start_cluster_live


@pytest.mark.slow  # 15 s of load around the kill, a cluster and a service started
def test_a_master_killed_under_load(
    tiny_bundle: Callable[..., Path], tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    live = start_cluster_live(tmp_path, tiny_bundle, **SERVICE_ENV)
    try:
        assert isinstance(live.redis, RedisClusterProcesses)
        res = run(live.url, live.redis, live.prefix, seconds=15, clients=4)
    finally:
        live.service.stop()
        live.redis.close()
    record(
        "a Redis Cluster master killed (SIGKILL) under load",
        "2xx throughout; a replica takes over; then cache hits and clicks again",
        f"{res.requests} requests, non-2xx {res.non_2xx}, p99 {res.p99_ms} ms (after the kill "
        f"{res.p99_after_kill_ms} ms); failover {res.failover_s} s, cache hit {res.cache_hit_s} s, "
        f"click {res.click_s} s after the kill",
    )
    assert res.non_2xx == 0, res.statuses
    assert res.promoted_port != res.killed_port
    # run() raises unless the failover, a cache hit and a counted click all came after the kill
    assert 0 < res.failover_s <= res.click_s
