"""The open-loop generator against a real socket server: schedule, counts, and queueing made visible."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from benchmarks.serving.openloop import OpenLoop, OpenLoopResult


@asynccontextmanager
async def one_at_a_time_server(service_s: float, status: int = 200) -> AsyncIterator[str]:
    """HTTP/1.1 keep-alive server that answers one request at a time, each after `service_s`."""
    lock = asyncio.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                async with lock:
                    await asyncio.sleep(service_s)
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def run(
    service_s: float,
    rate: float,
    seconds: float,
    max_connections: int,
    status: int = 200,
    uvloop: bool = False,
) -> OpenLoopResult:
    async def go() -> OpenLoopResult:
        async with one_at_a_time_server(service_s, status) as url:
            gen = OpenLoop(url, "/recommend", b'{"k":1}', {"X-Variant": "mail"}, max_connections)
            result = await gen.run(rate, seconds, warmup=0.2, timeout=10.0)
            await asyncio.sleep(0.05)  # let the server see the connections close
            return result

    if uvloop:  # what the generator runs on as a command (its transports are not asyncio's classes)
        import uvloop as uv

        with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
            return runner.run(go())
    return asyncio.run(go())


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_every_scheduled_request_is_sent_and_counted(uvloop: bool) -> None:
    r = run(service_s=0.0, rate=200, seconds=1.0, max_connections=8, uvloop=uvloop)
    assert r.scheduled == 200  # the measured window's requests; the warm-up's 40 are not in it
    assert r.completed == 200 and r.errors == 0 and r.statuses == {"200": 200}
    assert 1 <= r.connections <= 8


def test_latency_counts_from_the_schedule_so_queueing_is_not_hidden() -> None:
    # The server takes 20 ms per request, one at a time: 50 req/s at most. Offered 100 req/s over
    # one connection, request i waits for the ones before it; a closed-loop tool would report about
    # 20 ms for every request. Counted from the schedule, the last of 1.2 s of requests is due at
    # 1.2 s and cannot be answered before 120 * 20 ms = 2.4 s: at least ~1 s late, whatever the host.
    r = run(service_s=0.02, rate=100, seconds=1.0, max_connections=1)
    assert r.connections == 1
    assert r.completed == r.scheduled == 100
    assert r.max_ms > 900
    assert r.p50_ms > 300


def test_non_2xx_answers_are_errors() -> None:
    r = run(service_s=0.0, rate=50, seconds=0.5, max_connections=4, status=503)
    assert r.completed == 0 and r.errors == r.scheduled == 25 and r.statuses == {"503": 25}


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        OpenLoop("https://example.com", "/", b"", {}, 1)
