"""An open-loop load generator: requests leave on a fixed schedule, latency counts from that schedule.

wrk (closed loop) sends a connection's next request only when its last answer is back, so a slow
answer also delays the requests that would have followed it, and its percentiles never see them
wait: queueing is hidden ("coordinated omission"). Here request i is due at `start + i / rate`
whatever happened before it; it takes an idle keep-alive connection (or opens one, up to
`max_connections`; past that it waits for one, and that wait is part of its latency), and its
latency runs from its due time to the end of its answer. The generator's own lateness (due time to
the moment its request starts, before any wait for a connection) is reported beside it, so a
generator that could not keep up is seen as such, not blamed on the server.

One body and one set of headers for every request (the fixed-body scenarios of the serving
benchmark). Run as a process pinned to a core of its own:

    python -m benchmarks.serving.openloop --url http://127.0.0.1:8000 --body-file body.json \\
        --header X-Variant=mail --rate 1000 --seconds 10

It prints one JSON line (`OPENLOOP_JSON {...}`) with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

# uvloop's loop.time() counts whole milliseconds: every time here is read from perf_counter
clock = time.perf_counter
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def send(self, request: bytes) -> asyncio.Future[int]:
        """Write `request`; the future gets the answer's status code once its body is in."""
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        if CHUNKED.search(head):
            self._fail(RuntimeError("chunked answers are not supported by this generator"))
            return
        match = CONTENT_LENGTH.search(head)
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None
        if self.transport is not None:
            self.transport.close()
        self.closed = True


@dataclass
class OpenLoopResult:
    offered_rps: float
    seconds: float
    scheduled: int  # requests due in the measured window
    completed: int  # of those, answered with 2xx
    errors: int  # non-2xx answers, broken connections, no answer within the timeout
    achieved_rps: float  # 2xx answers that ended within the measured window, per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    send_lag_p99_ms: float  # the generator's own lateness: due time -> request started (before any
    # wait for a free connection, which is the server's queueing and counts in the latency)
    connections: int  # connections opened in all
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OpenLoop:
    def __init__(
        self, url: str, path: str, body: bytes, headers: dict[str, str], max_connections: int
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http://host:port URLs are supported, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.max_connections = max_connections
        self.idle: list[HttpConnection] = []
        self.handed: asyncio.Queue[HttpConnection] = asyncio.Queue()  # for requests that wait
        self.waiters = 0
        self.opened = 0

    async def _connection(self) -> HttpConnection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.opened -= 1  # closed by the server while idle
        if not self.handed.empty():
            return self.handed.get_nowait()
        if self.opened < self.max_connections:
            self.opened += 1
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    HttpConnection, self.host, self.port
                )
            except BaseException:
                self.opened -= 1
                raise
            return conn
        self.waiters += 1
        try:
            return await self.handed.get()
        finally:
            self.waiters -= 1

    def _release(self, conn: HttpConnection) -> None:
        if conn.closed:
            self.opened -= 1  # a broken connection frees its place in the pool
        elif self.waiters > self.handed.qsize():  # a request waits for a connection: hand it this one
            self.handed.put_nowait(conn)
        else:
            self.idle.append(conn)

    async def one(self, due: float, timeout: float) -> tuple[float, float, float, str]:
        """(latency from the due time, the generator's own lateness in starting it, when it ended,
        outcome: a status code or 'error')."""
        started = clock()
        try:
            conn = await asyncio.wait_for(self._connection(), timeout)
            sent = clock()
            try:
                status = await asyncio.wait_for(conn.send(self.request), max(timeout - (sent - due), 0.001))
            except BaseException:
                conn._fail(ConnectionAbortedError("abandoned"))
                raise
            finally:
                self._release(conn)
            outcome = str(status)
        except (TimeoutError, OSError, RuntimeError):
            outcome = "error"
        ended = clock()
        return ended - due, started - due, ended, outcome

    def close(self) -> None:
        """Close the pool's connections (every request is over)."""
        while not self.handed.empty():
            self.idle.append(self.handed.get_nowait())
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()

    async def run(self, rate: float, seconds: float, warmup: float, timeout: float) -> OpenLoopResult:
        interval = 1.0 / rate
        n_warm, n_total = round(warmup * rate), round((warmup + seconds) * rate)
        start = clock() + 0.05
        tasks: list[asyncio.Task[tuple[float, float, float, str]]] = []
        i = 0
        while i < n_total:
            now = clock()
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < n_total and start + i * interval <= now:  # everything due by now leaves now
                tasks.append(asyncio.create_task(self.one(start + i * interval, timeout)))
                i += 1
        outcomes = await asyncio.gather(*tasks)
        self.close()
        measured = outcomes[n_warm:]
        latency = np.array([o[0] for o in measured]) * 1e3
        lag = np.array([o[1] for o in measured]) * 1e3
        statuses: dict[str, int] = {}
        for *_, status in measured:
            statuses[status] = statuses.get(status, 0) + 1
        ok = sum(v for k, v in statuses.items() if k.startswith("2"))
        window = (start + warmup, start + warmup + seconds)  # 2xx answers that ended inside it
        in_window = sum(1 for o in outcomes if window[0] <= o[2] < window[1] and o[3].startswith("2"))
        p = np.percentile(latency, [50, 90, 99, 99.9]) if len(latency) else np.zeros(4)
        return OpenLoopResult(
            offered_rps=round(rate, 1),
            seconds=seconds,
            scheduled=len(measured),
            completed=ok,
            errors=len(measured) - ok,
            achieved_rps=round(in_window / seconds, 1),
            p50_ms=round(float(p[0]), 3),
            p90_ms=round(float(p[1]), 3),
            p99_ms=round(float(p[2]), 3),
            p999_ms=round(float(p[3]), 3),
            max_ms=round(float(latency.max()), 3) if len(latency) else 0.0,
            send_lag_p99_ms=round(float(np.percentile(lag, 99)), 3) if len(lag) else 0.0,
            connections=self.opened,
            statuses=statuses,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://host:port of the server")
    parser.add_argument("--path", default="/recommend")
    parser.add_argument("--body-file", type=Path, required=True, help="the JSON body every request sends")
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, on a fixed schedule")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate, not measured")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds from due time to give up")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    headers = dict(h.split("=", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the generator still works on asyncio's own loop, only costlier
        pass

    async def go() -> OpenLoopResult:
        gen = OpenLoop(args.url, args.path, args.body_file.read_bytes(), headers, args.max_connections)
        return await gen.run(args.rate, args.seconds, args.warmup, args.timeout)

    result = asyncio.run(go())
    print("OPENLOOP_JSON " + json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
