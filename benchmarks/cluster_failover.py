"""A Redis Cluster master killed under load: what the service's clients see, and when it recovers.

The service (MAILREC_REDIS_CLUSTER=1) runs on a real cluster of 3 masters + 3 replicas
(`cluster-node-timeout` 1000 ms). A few clients post /recommend for one cold user whose cached
vector lives on one master; that master gets SIGKILL mid-run. Measured: every response's status
and latency (non-2xx, p99 over the run and over the seconds after the kill), when a replica owns
the slot (failover), when the vector is served from the cache again, and when a click of a user
whose history lives in that slot is counted and warms the user. `run` is the scenario (the test
`tests/faults/test_cluster_failover.py` asserts on it); `main` writes
benchmarks/results/redis-cluster-failover.md:

    python -m benchmarks.cluster_failover --bundles DIR   (DIR holds control/ and mail/)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.metrics import metric_value
from benchmarks.harness.processes import REPO, RedisClusterProcesses, ServiceProcess
from benchmarks.serving import scenarios

ATTRS = {"segment": "s1", "age": 31, "gender": "F"}
RESULTS = REPO / "benchmarks" / "results"


@dataclass
class Failover:
    requests: int
    non_2xx: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    p99_after_kill_ms: float  # the requests sent in the 5 s after the kill
    max_ms: float
    failover_s: float  # kill -> a replica owns the slot, in every live node's view
    cache_hit_s: float  # kill -> the vector read from the cache again
    click_s: float  # kill -> a click on a user of that slot counted, and the user no longer cold
    killed_port: int
    promoted_port: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def promoted(cluster: RedisClusterProcesses, key: str, dead: int) -> bool:
    """Whether another master than the dead one owns `key`'s slot, in every live node's view."""
    try:
        return cluster.ok() and cluster.master_for(key).port != dead
    except (RuntimeError, redis.RedisError):
        return False


def hits(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "mailrec_cache_requests_total", result="hit")


def user_on(cluster: RedisClusterProcesses, prefix: str, port: int) -> str:
    """A new user whose history key lives on the master at `port`."""
    for _ in range(200):
        user = f"failover-{uuid.uuid4().hex[:8]}"
        if cluster.master_for(f"{prefix}:hist:{{{user}}}").port == port:
            return user
    raise RuntimeError(f"no user id on the master at {port} in 200 tries")


async def load(
    url: str, body: dict[str, Any], seconds: float, clients: int
) -> list[tuple[float, int, float]]:
    """(send time, status, latency s) of every /recommend that `clients` loops sent for `seconds`."""
    out: list[tuple[float, int, float]] = []
    end = time.monotonic() + seconds

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as ac:
            while time.monotonic() < end:
                t = time.monotonic()
                try:
                    status = (
                        await ac.post("/recommend", json=body, headers={"X-Variant": "mail"})
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                out.append((t, status, time.monotonic() - t))

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return out


def run(
    service_url: str,
    cluster: RedisClusterProcesses,
    prefix: str,
    seconds: float = 15,
    clients: int = 4,
    attrs: dict[str, Any] | None = None,
) -> Failover:
    """Kill, under load, the master holding the load's cached vector (see the module docstring);
    `attrs`: the users' attributes (the tests' tiny bundles' by default)."""
    attrs = ATTRS if attrs is None else attrs
    body = {"user_id": f"load-{uuid.uuid4().hex[:6]}", "attributes": attrs}
    with httpx.Client(base_url=service_url, timeout=10) as client:
        for _ in range(3):  # the vector computed, written back, then read from the cache
            client.post("/recommend", json=body, headers={"X-Variant": "mail"}).raise_for_status()
            time.sleep(0.2)
        with cluster.client() as rc:
            vkeys = [k.decode() for k in rc.scan_iter(f"{prefix}:vb:*", count=1000)]
        assert len(vkeys) == 1, vkeys
        victim = cluster.master_for(vkeys[0])
        user = user_on(cluster, prefix, victim.port)

        result: dict[str, list[tuple[float, int, float]]] = {}

        def background() -> None:
            result["load"] = asyncio.run(load(service_url, body, seconds, clients))

        thread = threading.Thread(target=background)
        thread.start()
        time.sleep(min(3.0, seconds / 4))
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc = None
        killed = time.monotonic()
        time.sleep(0.3)  # no reply from the dead master is in flight any more
        hits_at_kill = hits(client)
        failover = hit = click = None
        while (failover is None or hit is None or click is None) and time.monotonic() - killed < 60:
            now = time.monotonic() - killed
            if failover is None and promoted(cluster, vkeys[0], victim.port):
                failover = now
            if hit is None and hits(client) > hits_at_kill:
                hit = now
            if click is None and failover is not None:
                served = client.post(
                    "/recommend",
                    json={"user_id": user, "attributes": attrs, "k": 3},
                    headers={"X-Variant": "mail"},
                ).json()
                if served["impression_id"] is not None:
                    item = served["items"][0]["item_id"]
                    fb = {"impression_id": served["impression_id"], "item_id": item, "event": "click"}
                    counted = client.post("/feedback", json=fb)
                    again = client.post("/recommend", json={"user_id": user, "attributes": attrs}).json()
                    if counted.status_code == 202 and again["cold_start"] is False:
                        click = time.monotonic() - killed
            time.sleep(0.1)
        thread.join()
        new_master = cluster.master_for(vkeys[0]).port
    sent = result["load"]
    statuses: dict[str, int] = {}
    for _, status, _ in sent:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = [lat for _, _, lat in sent]
    after = [lat for t, _, lat in sent if killed <= t < killed + 5]
    if failover is None or hit is None or click is None:
        raise RuntimeError(f"no recovery in 60 s: failover {failover}, cache hit {hit}, click {click}")
    return Failover(
        len(sent),
        sum(n for s, n in statuses.items() if not s.startswith("2")),
        statuses,
        round(percentile(latencies, 0.5) * 1000, 1),
        round(percentile(latencies, 0.99) * 1000, 1),
        round(percentile(after, 0.99) * 1000, 1),
        round(max(latencies) * 1000, 1),
        round(failover, 2),
        round(hit, 2),
        round(click, 2),
        victim.port,
        new_master,
    )


SERVICE_ENV = {"MAILREC_REDIS_CLUSTER": "1", "MAILREC_BREAKER_RESET_S": "1", "MAILREC_DEVICE": "cpu"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", type=Path, required=True, help="folder with control/ and mail/")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailrec-failover-"))
    bundles = {m: (args.bundles / m).resolve() for m in ("control", "mail")}
    experiments = write_experiment(work / "experiments.toml", bundles)
    cluster = RedisClusterProcesses().start()
    prefix = "failover"
    env = {
        **SERVICE_ENV,
        "MAILREC_EXPERIMENTS": str(experiments),
        "MAILREC_REDIS_URL": cluster.url,
        "MAILREC_REDIS_PREFIX": prefix,
        "MAILREC_LOG_LEVEL": "WARNING",
    }
    service = ServiceProcess(env, workdir=work)
    load_start = os.getloadavg()[0]
    try:
        service.start(timeout=120)
        sc = next(s for s in scenarios.build(bundles["mail"]) if s.name == "cold_cached_100")
        attrs = json.loads(scenarios.sample_body(sc, bundles["mail"]))["attributes"]
        res = run(service.url, cluster, prefix, args.seconds, args.clients, attrs)
    finally:
        service.stop()
        cluster.close()
    command = f"python -m benchmarks.cluster_failover --bundles {args.bundles} --seconds {args.seconds:g}"
    command += f" --clients {args.clients}"
    out = {"command": command, "load_average": [load_start, os.getloadavg()[0]], **asdict(res)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis-cluster-failover.json").write_text(json.dumps(out, indent=2) + "\n")
    text = "\n".join(
        [
            "# A Redis Cluster master killed under load",
            "",
            f"Command: `{command}`. Cluster: 3 masters + 3 replicas of Debian's redis-server on the "
            "loopback, cluster-node-timeout 1000 ms; the service (one uvicorn worker) with "
            f"{', '.join(f'{k}={v}' for k, v in SERVICE_ENV.items())}, the default budget (20 ms). "
            f"{args.clients} clients post /recommend for {args.seconds:g} s; the master holding their "
            "cached vector gets SIGKILL a few seconds in. Machine shared with other jobs: load average "
            f"{out['load_average'][0]:.1f} at the start, {out['load_average'][1]:.1f} at the end.",
            "",
            "| measured | |",
            "|---|---|",
            f"| requests | {res.requests} |",
            f"| non-2xx | {res.non_2xx} (statuses {res.statuses}) |",
            f"| latency p50 / p99 / max, whole run (ms) | {res.p50_ms} / {res.p99_ms} / {res.max_ms} |",
            f"| p99 of the requests sent in the 5 s after the kill (ms) | {res.p99_after_kill_ms} |",
            f"| kill -> a replica owns the slot, every live node agreeing (s) | {res.failover_s} |",
            f"| kill -> the vector served from the cache again (s) | {res.cache_hit_s} |",
            f"| kill -> a click on a user of that slot counted, user warm (s) | {res.click_s} |",
            f"| killed master / promoted replica (ports) | {res.killed_port} / {res.promoted_port} |",
            "",
            "Between the kill and the failover the breaker opens (the dead master refuses connections) "
            "and requests are served without Redis (no cache, no stored clicks), by design.",
            "",
        ]
    )
    (RESULTS / "redis-cluster-failover.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
