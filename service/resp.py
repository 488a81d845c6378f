"""A small Redis client for the request path: one connection, commands pipelined as they come.

Why not redis-py here: its asyncio client reads replies in a task of its own, so a reply that
arrived in time is only seen once the event loop gets back to that task. Under load (32
connections on one worker) that took longer than the request's Redis budget: measured, most cache
lookups timed out and the breaker opened on a healthy Redis, which also dropped the impression
records. Here the protocol's `data_received` resolves each caller's future as soon as the bytes are
in, so the budget measures Redis, not the event loop; and every command of every request shares
one connection (Redis answers in order, RESP2). The calls submitted in one pass of the event loop
go out together, in one `transport.write` at the end of that pass or as soon as WRITE_BATCH of
them are waiting. Fewer, larger writes cost less CPU per request; unbounded batches (end of pass
only) cost least, but then a call could wait a whole pass (32 requests' work) before it was even
sent, calls missed their budget and the breaker opened. 16 keeps the wait for a send to a few
requests' work (measured: benchmarks/results/serving-notes.md, commits ee4b04d and 1452462).

`submit(commands)` never blocks: it returns a future of the replies (a list, one per command). A
RESP error reply raises `ReplyError` for the whole call; a lost connection fails every call in
flight with `ConnectionDropped` (a `ConnectionError`), and the next call connects again. A caller
that stops waiting (budget spent) just cancels its future: its call stays in the queue, so the
replies that come later (a stalled Redis) still pair with the calls that asked for them, in order.
Past MAX_PENDING calls without a reply the connection is dropped. Every Redis call of the service
goes through here: /feedback once had a redis-py client of its own (a connection per concurrent
call), and under load its clicks were refused on a healthy Redis (issue 17).

URLs: redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix://path[?db=N&password=...].
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Reply = bytes | int | list[Any] | None
WRITE_BATCH = 16  # calls written together at most (see the module docstring)
Command = tuple[bytes | str | int, ...]


class ReplyError(ResponseError):
    """Redis answered a command with an error (`-ERR ...`)."""


class ConnectionDropped(RedisConnectionError):
    """The connection a call went out on was lost (closed by Redis, a proxy, the network): a call
    made again is made on a new connection, unlike one that failed to connect."""


class Incomplete(Exception):
    """The buffer ends inside a reply; wait for more bytes."""


def encode(commands: list[Command]) -> bytes:
    """RESP2 arrays of bulk strings, all commands in one buffer."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%b\r\n" % (len(raw), raw)
    return bytes(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply | ReplyError, int]:
    """One reply starting at `pos` -> (reply, position after it); Incomplete if cut short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    raise RedisConnectionError(f"unreadable reply from Redis: {bytes(buf[pos - len(line) - 3 : end])!r}")


@dataclass
class Batch:
    """The replies one call waits for, in order."""

    future: asyncio.Future[list[Reply]]
    count: int
    replies: list[Reply | ReplyError] = field(default_factory=list)
    submitted_at: float = 0.0  # loop time of `submit`
    sent_at: float | None = None  # loop time of the write that carried it
    answered_at: float | None = None  # loop time its last reply was read

    def add(self, reply: Reply | ReplyError) -> bool:
        self.replies.append(reply)
        if len(self.replies) < self.count:
            return False
        self.answered_at = self.future.get_loop().time()
        if not self.future.done():  # a caller past its budget no longer waits
            error = next((r for r in self.replies if isinstance(r, ReplyError)), None)
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(list(self.replies))  # type: ignore[arg-type]
        return True

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


MAX_PENDING = 10_000


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.client.protocol is not self:  # a connection already given up
            return
        self.buffer += data
        pending = self.client.pending
        pos = 0
        try:
            while pos < len(self.buffer):
                reply, pos = parse(self.buffer, pos)
                if not pending:
                    raise RedisConnectionError("a reply nobody asked for")
                if pending[0].add(reply):
                    pending.popleft()
        except Incomplete:
            pass
        except (ValueError, RedisConnectionError) as exc:
            self.client.lost(RedisConnectionError(f"Redis protocol error: {exc}"))
            return
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.protocol is self:
            self.client.lost(ConnectionDropped(f"connection to Redis lost ({exc or 'closed'})"))


@dataclass(frozen=True)
class Address:
    host: str | None
    port: int
    path: str | None  # unix socket
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Address:
        u = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if u.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r}")
        password = unquote(u.password) if u.password else query.get("password")
        username = unquote(u.username) if u.username else None
        if u.scheme == "unix":
            return cls(None, 0, u.path, int(query.get("db", "0")), username, password, False)
        db = int(u.path.lstrip("/") or query.get("db", "0"))
        return cls(
            u.hostname or "localhost", u.port or 6379, None, db, username, password, u.scheme == "rediss"
        )


class RespClient:
    """One pipelined connection; see the module docstring."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.address = Address.parse(url)
        self.connect_timeout = connect_timeout
        self.pending: deque[Batch] = deque()
        self.protocol: _Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[bytes] = []  # written once the connection is up
        self._outbox: list[tuple[bytes, Batch]] = []  # this pass's calls, written together (`_flush`)

    def submit(self, commands: list[Command]) -> asyncio.Future[list[Reply]]:
        """Send `commands` now (or as soon as connected); the future gets their replies."""
        return self.call(commands).future

    def call(self, commands: list[Command]) -> Batch:
        """`submit`, returning the call itself: its future, and when it was written and answered."""
        loop = asyncio.get_running_loop()
        if len(self.pending) >= MAX_PENDING:
            self.lost(RedisConnectionError(f"{MAX_PENDING} calls without a reply: connection dropped"))
        batch = Batch(loop.create_future(), len(commands), submitted_at=loop.time())
        self.pending.append(batch)
        data = encode(commands)
        if self._transport is not None:
            self._outbox.append((data, batch))
            if len(self._outbox) == 1:
                loop.call_soon(self._flush)
            elif len(self._outbox) >= WRITE_BATCH:
                self._flush()
        else:
            self._queued.append(data)
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        return batch

    async def _connect(self) -> None:
        a = self.address
        loop = asyncio.get_running_loop()
        try:
            if a.path is not None:
                connect = loop.create_unix_connection(lambda: _Protocol(self), a.path)
            else:
                tls = ssl.create_default_context() if a.tls else None
                connect = loop.create_connection(
                    lambda: _Protocol(self), a.host or "localhost", a.port, ssl=tls
                )
            async with asyncio.timeout(self.connect_timeout):
                transport, protocol = await connect
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            self.lost(RedisConnectionError(f"cannot connect to Redis: {exc!r}"))
            return
        hello: list[Command] = []
        if a.password is not None:
            hello.append(("AUTH", a.username, a.password) if a.username else ("AUTH", a.password))
        if a.db:
            hello.append(("SELECT", a.db))
        if hello:
            # the handshake's replies come first: a batch at the head that nobody awaits
            self.pending.appendleft(Batch(loop.create_future(), len(hello)))
            self.pending[0].future.add_done_callback(self._handshake_done)
            transport.write(encode(hello))
        self._transport = transport
        self.protocol = protocol
        self._connecting = None
        if self._queued:
            transport.write(b"".join(self._queued))
            now = loop.time()
            for batch in self.pending:
                batch.sent_at = batch.sent_at or now
        self._queued.clear()

    def _flush(self) -> None:
        """One write for the calls submitted since the last one: under load, requests that run in
        one pass of the event loop share a send, and Redis answers them in one read."""
        if self._transport is not None and self._outbox:
            self._transport.write(b"".join(data for data, _ in self._outbox))
            now = asyncio.get_running_loop().time()
            for _, batch in self._outbox:
                batch.sent_at = now
        self._outbox.clear()

    def sent_at(self, future: object) -> float | None:
        """Loop time at which the call behind `future` (from `submit`) was written; None if not
        (yet) or unknown."""
        return next((b.sent_at for b in self.pending if b.future is future), None)

    def _handshake_done(self, future: asyncio.Future[list[Reply]]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.lost(RedisConnectionError(f"Redis refused the handshake: {future.exception()}"))

    def lost(self, exc: BaseException) -> None:
        """Fail every call in flight and forget the connection; the next call connects again."""
        transport, self._transport = self._transport, None
        self.protocol = None
        self._queued.clear()
        self._outbox.clear()
        pending, self.pending = self.pending, deque()
        for batch in pending:
            batch.fail(exc)
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self.lost(RedisConnectionError("client closed"))
