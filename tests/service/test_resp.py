"""The request path's Redis client: RESP parsing, pipelining, errors, outages, against a real Redis."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from functools import partial

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from benchmarks.harness.processes import RedisServer
from service.cache import within
from service.resp import WRITE_BATCH, Address, Incomplete, ReplyError, RespClient, encode, key_of, parse

STREAM = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n*1\r\n:7\r\n*0\r\n-ERR wrong\r\n$0\r\n\r\n"
EXPECTED = [b"OK", 42, b"abc", None, [b"x", [7]], [], "ERR wrong", b""]


def _all(buf: bytes) -> list[object]:
    out: list[object] = []
    pos = 0
    while pos < len(buf):
        reply, pos = parse(buf, pos)
        out.append(str(reply) if isinstance(reply, ReplyError) else reply)
    return out


def test_parse_every_reply_kind_and_every_cut() -> None:
    assert _all(STREAM) == EXPECTED
    for cut in range(1, len(STREAM)):
        pos, done = 0, 0
        try:
            while True:
                _, pos = parse(STREAM[:cut], pos)
                done += 1
        except (Incomplete, IndexError):
            pass
        except ValueError:  # a length cut in half is not a number yet
            pass
        assert _all(STREAM[:pos]) == EXPECTED[:done]


def test_encode() -> None:
    assert (
        encode([("SET", "k", b"\x00\xff", "EX", 5)])
        == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00\xff\r\n$2\r\nEX\r\n$1\r\n5\r\n"
    )


def test_addresses() -> None:
    a = Address.parse("redis://user:p%40ss@cache.local:6380/2")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == (
        "cache.local",
        6380,
        2,
        "user",
        "p@ss",
        False,
    )
    b = Address.parse("unix:///run/redis.sock?db=3&password=x")
    assert (b.path, b.db, b.password) == ("/run/redis.sock", 3, "x")
    assert Address.parse("rediss://h").tls and Address.parse("redis://h").port == 6379
    with pytest.raises(ValueError):
        Address.parse("http://h")


def test_tls_settings_come_from_the_rediss_query() -> None:
    default = Address.parse("rediss://h:6380/0").ssl_context()
    assert default is not None and default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    loose = Address.parse("rediss://h/0?ssl_cert_reqs=none").ssl_context()
    assert loose is not None and loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    assert Address.parse("redis://h").ssl_context() is None
    with pytest.raises(ValueError, match="unsupported Redis URL parameters"):
        Address.parse("redis://h/0?ssl_cert_reqs=none")  # TLS settings without TLS
    with pytest.raises(ValueError, match="unsupported Redis URL parameters"):
        Address.parse("rediss://h/0?ssl_verify=no")
    with pytest.raises(FileNotFoundError):  # the files named are the files used
        Address.parse("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem").ssl_context()


def test_the_key_that_routes_a_command_on_a_cluster() -> None:
    assert key_of(("GET", "p:vb:v1:abc")) == b"p:vb:v1:abc"
    assert key_of(("LRANGE", "p:hist:{u}", 0, -1)) == b"p:hist:{u}"
    assert key_of(("EVAL", "script", 2, "p:clk:{u}:i:1", "p:hist:{u}", 60)) == b"p:clk:{u}:i:1"
    assert key_of(("EVAL", "return 1", 0)) is None and key_of(("PING",)) is None
    # the click script's two keys route to one slot: the user's hash tag
    assert key_slot(b"p:clk:{u-1}:imp:7") == key_slot(b"p:hist:{u-1}")


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.close()


def test_pipelined_calls_get_their_own_replies(server: RedisServer) -> None:
    async def run() -> None:
        client = RespClient(server.url, 1.0)
        calls = [
            client.submit([("SET", f"k{i}", i), ("GET", f"k{i}"), ("LRANGE", "none", 0, -1)])
            for i in range(200)
        ]
        replies = await asyncio.gather(*calls)  # submitted before the connection was up
        assert replies == [[b"OK", str(i).encode(), []] for i in range(200)]
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.submit([("LPUSH", "k1", "x")])
        assert await client.submit([("GET", "k7")]) == [b"7"]  # the connection goes on
        client.close()

    asyncio.run(run())


def test_calls_of_one_loop_pass_share_one_write(server: RedisServer) -> None:
    async def run() -> None:
        client = RespClient(server.url, 1.0)
        await client.submit([("PING",)])  # connected
        assert client._transport is not None
        writes: list[bytes] = []
        write = client._transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        client._transport.write = counted  # type: ignore[method-assign]
        calls = [client.submit([("SET", f"w{i}", i), ("GET", f"w{i}")]) for i in range(50)]
        assert await asyncio.gather(*calls) == [[b"OK", str(i).encode()] for i in range(50)]
        assert [w.count(b"SET") for w in writes] == [WRITE_BATCH] * 3 + [50 - 3 * WRITE_BATCH]
        assert await client.submit([("GET", "w3")]) == [b"3"]  # a later pass: a write of its own
        assert len(writes) == 5
        client.close()

    asyncio.run(run())


def test_stop_fails_calls_and_a_restart_reconnects(server: RedisServer) -> None:
    async def run() -> None:
        client = RespClient(server.url, 0.5)
        assert await client.submit([("SET", "a", 1)]) == [b"OK"]
        server.stop()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(client.submit([("GET", "a")]), 5)
        server.start()
        assert await client.submit([("GET", "a")]) == [None]  # a new, empty server
        client.close()

    asyncio.run(run())


def test_a_stalled_redis_costs_the_budget_and_late_replies_pair_correctly(server: RedisServer) -> None:
    async def run() -> None:
        client = RespClient(server.url, 0.5)
        await client.submit([("SET", "x", "1")])
        server.pause(500)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await within(client.submit([("GET", "x")]), 0.02)
        assert time.perf_counter() - started < 0.2
        later = client.submit([("SET", "x", "2"), ("GET", "x")])
        assert await asyncio.wait_for(later, 5) == [b"OK", b"2"]
        client.close()

    asyncio.run(run())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_reply_that_came_in_time_is_kept_however_late_the_loop_is(server: RedisServer, loop: str) -> None:
    """The loop blocked well past the budget while the call waits: the reply was in long before."""

    async def run() -> None:
        client = RespClient(server.url, 0.5)
        await client.submit([("SET", "y", "v")])
        call = client.submit([("GET", "y")])
        await asyncio.sleep(0)  # the end of this loop pass: the call is written
        asyncio.get_running_loop().call_soon(time.sleep, 0.05)  # 50 ms busy: past the 20 ms budget
        assert await within(call, 0.02) == [b"v"]
        client.close()

    if loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_call_written_late_gets_its_budget_from_the_write(server: RedisServer, loop: str) -> None:
    """The loop blocked past the budget before the call went out: the delay is ours, not Redis's;
    a stalled Redis still fails the call about a budget after the write."""

    async def run() -> None:
        client = RespClient(server.url, 0.5)
        await client.submit([("SET", "z", "v")])
        asyncio.get_running_loop().call_soon(time.sleep, 0.05)  # 50 ms busy before this pass's write
        call = client.submit([("GET", "z")])
        assert await within(call, 0.02, partial(client.sent_at, call)) == [b"v"]
        server.pause(500)
        call = client.submit([("GET", "z")])
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await within(call, 0.02, partial(client.sent_at, call))
        assert time.perf_counter() - started < 0.2
        client.close()

    if loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())
