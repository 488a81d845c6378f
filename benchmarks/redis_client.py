"""redis-py (asyncio, hiredis parser) against the hand-written RESP client, in the same run.

Issue 13: keep the hand-written client (`service/resp.py`) only if it wins by more than 15%.
Both serve the same service on the same redis-server, one scenario (`cold_cached_100`: a cold
user whose virtual behavior is in the cache), alternating client by client, several rounds:

- in process: CPU microseconds per request of the ASGI app (as `benchmarks.serving.inprocess`),
  one app, its `RedisStore.pipe` swapped between the two clients before each run;
- over HTTP: two uvicorn services side by side (pinned to one core), wrk at 32 connections
  (pinned to another), for `--seconds` each, alternating.

`python -m benchmarks.redis_client --bundles DIR` (DIR holds control/ and mail/, e.g. the serving
benchmark's `.cache/bench-serving/<key>/bundles`); writes benchmarks/results/redis-client.{md,json}.
`RedisPyClient` here stands in for `service.resp.RespClient` (same calls, same times read off them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import service.resp
from benchmarks.harness.metrics import metric_by
from benchmarks.harness.processes import REPO, Proc, RedisServer, free_port, http_ok, pinned
from benchmarks.serving import scenarios
from benchmarks.serving.inprocess import drive
from benchmarks.serving.loadgen import Load, run_wrk
from benchmarks.serving.run import write_experiments
from service.resp import Command, Reply

CLIENTS = ("redis-py", "resp")
SCENARIO = "cold_cached_100"
RESULTS = REPO / "benchmarks" / "results"


class RedisPyCall:
    """One call through redis-py, with the times `RedisStore` reads off a call: submitted and
    answered (redis-py does not say when it wrote, so the budget counts from the submission)."""

    def __init__(self, client: Redis, commands: list[Command]) -> None:
        loop = asyncio.get_running_loop()
        self.submitted_at = loop.time()
        self.sent_at: float | None = None
        self.answered_at: float | None = None
        self.future = loop.create_task(self.run(client, commands))

    async def run(self, client: Redis, commands: list[Command]) -> list[Reply]:
        try:
            if len(commands) == 1:
                return [await client.execute_command(*commands[0])]
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Reply] = await pipe.execute(raise_on_error=True)
            return replies
        finally:
            self.answered_at = asyncio.get_running_loop().time()


class RedisPyClient:
    """redis-py's asyncio client (a pool of connections, hiredis parsing) in `RespClient`'s place;
    its own retries off, as `RedisStore` makes a dropped call once more itself."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.client = Redis.from_url(url, socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0))

    def call(self, commands: list[Command]) -> RedisPyCall:
        return RedisPyCall(self.client, commands)

    def close(self) -> None:
        asyncio.get_running_loop().create_task(self.client.aclose())


def redispy_app() -> Any:
    """`uvicorn --factory benchmarks.redis_client:redispy_app`: the service on redis-py."""
    from service.main import create_app

    def connect(url: str, cluster: bool, connect_timeout: float) -> Any:
        return RedisPyClient(url, connect_timeout)

    service.resp.connect = connect
    return create_app()


async def inprocess(
    url: str, work: Path, bundles: dict[str, Path], rounds: int, n: int, budget_ms: float
) -> dict[str, Any]:
    from service.config import Settings
    from service.main import create_app

    settings = Settings(
        experiments=write_experiments(work, bundles),
        redis_url=url,
        device="cpu",
        redis_prefix="redis-client-inproc",
        redis_budget_ms=budget_ms,
        log_level="WARNING",
    )
    app = create_app(settings)
    sc = next(s for s in scenarios.build(bundles["mail"]) if s.name == SCENARIO)
    body = scenarios.sample_body(sc, bundles["mail"]).encode()
    cpu: dict[str, list[float]] = {c: [] for c in CLIENTS}
    async with app.router.lifespan_context(app):
        store = app.state.mailrec.store
        gateways: dict[str, Any] = {"redis-py": RedisPyClient(url, 0.05), "resp": store.pipe}
        for name in CLIENTS:  # warm-up, each client
            store.pipe = gateways[name]
            await drive(app, body, sc.load.headers, n // 4, 32)
        for r in range(rounds):
            for name in CLIENTS if r % 2 == 0 else CLIENTS[::-1]:
                store.pipe = gateways[name]
                cpu[name].append((await drive(app, body, sc.load.headers, n, 32))[0])
                print(f"  in process, round {r + 1}, {name}: {cpu[name][-1]:.0f} us CPU/request", flush=True)
        store.pipe = gateways["resp"]
        await gateways["redis-py"].client.aclose()
        text = app.state.mailrec.metrics.exposition().decode()
    return {"cpu_us": cpu, "cache": metric_by(text, "mailrec_cache_requests_total", "result")}


def start(name: str, work: Path, experiments: Path, url: str, cpu: str, budget_ms: float) -> tuple[Proc, str]:
    port = free_port()
    factory = "service.main:create_app" if name == "resp" else "benchmarks.redis_client:redispy_app"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAILREC_EXPERIMENTS": str(experiments),
        "MAILREC_REDIS_URL": url,
        "MAILREC_REDIS_PREFIX": f"redis-client-{name}",
        "MAILREC_DEVICE": "cpu",
        "MAILREC_LOG_LEVEL": "WARNING",
        "MAILREC_REDIS_BUDGET_MS": str(budget_ms),
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
    proc = Proc(name, pinned(cmd, cpu), work / f"{name}-{port}.log", env)
    base = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: http_ok(f"{base}/readyz"), timeout=120)
    return proc, base


def http(
    url: str, work: Path, bundles: dict[str, Path], rounds: int, seconds: float, budget_ms: float
) -> dict[str, Any]:
    experiments = write_experiments(work, bundles)
    sc = next(s for s in scenarios.build(bundles["mail"]) if s.name == SCENARIO)
    load = Load(sc.load.headers, body=scenarios.sample_body(sc, bundles["mail"]))
    procs = {name: start(name, work, experiments, url, "0", budget_ms) for name in CLIENTS}
    rps: dict[str, list[float]] = {c: [] for c in CLIENTS}
    p99: dict[str, list[float]] = {c: [] for c in CLIENTS}
    errors: dict[str, int] = dict.fromkeys(CLIENTS, 0)
    cache: dict[str, dict[str, float]] = {}
    try:
        for name in CLIENTS:  # warm-up
            run_wrk(procs[name][1], load, 32, 2, work, cpu="1")
        for r in range(rounds):
            for name in CLIENTS if r % 2 == 0 else CLIENTS[::-1]:
                res = run_wrk(procs[name][1], load, 32, seconds, work, cpu="1")
                rps[name].append(res.rps)
                p99[name].append(res.p99_ms)
                errors[name] += res.errors
                print(f"  HTTP, round {r + 1}, {name}: {res.rps:.0f} req/s, p99 {res.p99_ms} ms", flush=True)
        for name, (_, base) in procs.items():
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            cache[name] = metric_by(text, "mailrec_cache_requests_total", "result")
    finally:
        for proc, _ in procs.values():
            proc.stop()
    return {"rps": rps, "p99_ms": p99, "errors": errors, "cache": cache}


def report(args: argparse.Namespace, res: dict[str, Any], load: tuple[float, float], commit: str) -> str:
    cpu = {c: statistics.median(res["inprocess"]["cpu_us"][c]) for c in CLIENTS}
    rps = {c: statistics.median(res["http"]["rps"][c]) for c in CLIENTS}
    inproc = res["inprocess"]
    lines = [
        "# redis-py (asyncio + hiredis) vs the hand-written RESP client",
        "",
        f"Command: `{res['command']}` at commit {commit}.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with "
        f"other jobs: load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. Scenario "
        f"`{SCENARIO}` (a cold user, vector in the cache), MAILREC_REDIS_BUDGET_MS {args.budget_ms:g}, "
        f"one redis-server; clients alternated, {args.rounds} rounds.",
        "",
        "| | redis-py + hiredis | hand-written | hand-written / redis-py |",
        "|---|---|---|---|",
        f"| in process: CPU per request, median (us) | {cpu['redis-py']:.0f} | {cpu['resp']:.0f} | "
        f"{cpu['resp'] / cpu['redis-py']:.3f} |",
        f"| in process: runs (us) | {', '.join(f'{x:.0f}' for x in inproc['cpu_us']['redis-py'])} | "
        f"{', '.join(f'{x:.0f}' for x in inproc['cpu_us']['resp'])} | |",
        f"| HTTP, 32 connections: req/s, median | {rps['redis-py']:.0f} | {rps['resp']:.0f} | "
        f"{rps['resp'] / rps['redis-py']:.3f} |",
        f"| HTTP: runs (req/s) | {', '.join(f'{x:.0f}' for x in res['http']['rps']['redis-py'])} | "
        f"{', '.join(f'{x:.0f}' for x in res['http']['rps']['resp'])} | |",
        f"| HTTP: p99 per run (ms) | {', '.join(f'{x:.1f}' for x in res['http']['p99_ms']['redis-py'])} | "
        f"{', '.join(f'{x:.1f}' for x in res['http']['p99_ms']['resp'])} | |",
        f"| HTTP: errors | {res['http']['errors']['redis-py']} | {res['http']['errors']['resp']} | |",
        f"| HTTP: cache lookups | {res['http']['cache']['redis-py']} | {res['http']['cache']['resp']} | |",
        "",
        f"In process, cache lookups of both clients together: {res['inprocess']['cache']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", type=Path, required=True, help="folder with control/ and mail/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="per in-process run")
    parser.add_argument("--seconds", type=float, default=10, help="per HTTP run")
    parser.add_argument("--budget-ms", type=float, default=20, help="MAILREC_REDIS_BUDGET_MS of both")
    parser.add_argument("--out", default="redis-client", help="results file name, .md and .json")
    args = parser.parse_args()
    bundles = {m: (args.bundles / m).resolve() for m in ("control", "mail")}
    work = Path(tempfile.mkdtemp(prefix="mailrec-redis-client-"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    load_start = os.getloadavg()[0]
    redis_server = RedisServer(work, cpu="1").start()
    try:
        t = time.monotonic()
        res: dict[str, Any] = {
            "command": f"python -m benchmarks.redis_client --bundles {args.bundles} --rounds {args.rounds} "
            f"--requests {args.requests} --seconds {args.seconds:g} --budget-ms {args.budget_ms:g} "
            f"--out {args.out}",
            "inprocess": uvloop.run(
                inprocess(redis_server.url, work, bundles, args.rounds, args.requests, args.budget_ms)
            ),
            "http": http(redis_server.url, work, bundles, args.rounds, args.seconds, args.budget_ms),
        }
        res["wall_s"] = round(time.monotonic() - t, 1)
    finally:
        redis_server.stop()
    loads = (load_start, os.getloadavg()[0])
    res |= {"commit": commit, "load_average": loads, "cores": os.cpu_count()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=2) + "\n")
    text = report(args, res, loads, commit)
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
