"""CPU time per request of the service's ASGI app, in-process: the before/after gauge for one change.

Drives `service.main:create_app()` directly (no sockets on the HTTP side, so no uvicorn or httptools,
which every variant pays alike) with `--concurrency` requests in flight on one uvloop event loop,
against a real redis-server, and reports process CPU microseconds per request. CPU time, unlike
wall time, hardly moves with what else runs on the machine, so small changes can be compared on a
busy one. `python -m benchmarks.serving.inprocess --bundles bundles --scenario cold_cached_100`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.harness.metrics import metric_by
from benchmarks.harness.processes import RedisServer
from benchmarks.serving import scenarios
from benchmarks.serving.run import write_experiments


def scope_for(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    raw = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/recommend",
        "raw_path": b"/recommend",
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def one(app: Any, body: bytes, headers: dict[str, str]) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope_for(body, headers), receive, send)
    return status


async def drive(
    app: Any, body: bytes, headers: dict[str, str], n: int, concurrency: int
) -> tuple[float, float]:
    queue = iter(range(n))
    bad = 0

    async def worker() -> None:
        nonlocal bad
        for _ in queue:
            if await one(app, body, headers) != 200:
                bad += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if bad:
        raise RuntimeError(f"{bad} of {n} requests failed")
    return cpu / n * 1e6, wall / n * 1e6


def inference_means(exposition: str) -> dict[str, float]:
    """Mean duration of each tower's onnxruntime calls over the process's life (warm-up included)."""
    sums = metric_by(exposition, "mailrec_inference_duration_seconds_sum", "tower")
    counts = metric_by(exposition, "mailrec_inference_duration_seconds_count", "tower")
    return {t: round(sums[t] / counts[t] * 1e6, 1) for t in sums if counts.get(t)}


async def main_async(args: argparse.Namespace) -> None:
    from service.config import Settings
    from service.main import create_app

    work = Path(tempfile.mkdtemp(prefix="mailrec-inproc-"))
    bundles = {m: (args.bundles / m).resolve() for m in ("control", "mail")}
    redis_server = RedisServer(work).start()
    url = redis_server.url
    try:
        settings = Settings(  # WARNING, as procs.py: no per-request log line on the measured path
            experiments=write_experiments(work, bundles),
            redis_url=url,
            device="cpu",
            redis_prefix="inproc",
            log_level="WARNING",
        )
        app = create_app(settings)
        # the people scenarios too: their sample body (one fixed new user) is what is sent here
        built = scenarios.build(bundles["mail"], people=[scenarios.ATTRS])
        sc = next(s for s in built if s.name == args.scenario)
        body = scenarios.sample_body(sc, bundles["mail"]).encode()
        async with app.router.lifespan_context(app):
            await drive(app, body, sc.load.headers, args.requests // 4, args.concurrency)  # warm-up
            runs = [
                await drive(app, body, sc.load.headers, args.requests, args.concurrency)
                for _ in range(args.repeat)
            ]
            text = app.state.mailrec.metrics.exposition().decode()
        cache = metric_by(text, "mailrec_cache_requests_total", "result")
        print(f"cache lookups: {cache}")
        print(f"mean onnxruntime call, us: {inference_means(text)}")
    finally:
        redis_server.stop()
    cpu = [r[0] for r in runs]
    wall = statistics.median(r[1] for r in runs)
    print(
        f"{args.scenario} c={args.concurrency}: CPU per request median {statistics.median(cpu):.0f} us "
        f"(runs {', '.join(f'{c:.0f}' for c in cpu)}), wall per request {wall:.0f} us; "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundles", type=Path, required=True, help="folder with control/ and mail/")
    parser.add_argument("--scenario", default="cold_cached_100")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("MAILREC_BENCH_DEBUG"):
        logging.getLogger("service.cache").setLevel(logging.DEBUG)
    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
