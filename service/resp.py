"""A small Redis client for the request path: one connection, commands pipelined as they come.

Why not redis-py here: its asyncio client reads replies in a task of its own, so a reply that
arrived in time is only seen once the event loop gets back to that task. Under load (32 connections
on one worker) that took longer than the request's Redis budget: measured, most cache lookups timed
out and the breaker opened on a healthy Redis, which also dropped the impression records. It also
costs more CPU: measured against redis-py 8.1 with hiredis in one run (issue 13,
`benchmarks/redis_client.py`), 483 against 309 us per cold cached request in process, 316 against
454 req/s at 32 connections (benchmarks/results/redis-client.md). Here the protocol's
`data_received` resolves each caller's future as soon as the bytes are in, so the budget measures
Redis, not the event loop; and every command of every request shares one connection (Redis answers
in order, RESP2). The calls submitted in one pass of the event loop go out together, in one
`transport.write` at the end of that pass or as soon as WRITE_BATCH of them are waiting. Fewer,
larger writes cost less CPU per request; unbounded batches (end of pass only) cost least, but then
a call could wait a whole pass (32 requests' work) before it was even sent, calls missed their
budget and the breaker opened. 16 keeps the wait for a send to a few requests' work (measured:
benchmarks/results/serving-notes.md, commits ee4b04d and 1452462).

`submit(commands)` never blocks: it returns a future of the replies (a list, one per command). A
RESP error reply raises `ReplyError` for the whole call; a lost connection fails every call in
flight with `ConnectionDropped` (a `ConnectionError`), and the next call connects again. A caller
that stops waiting (budget spent) just cancels its future: its call stays in the queue, so the
replies that come later (a stalled Redis) still pair with the calls that asked for them, in order.
Past MAX_PENDING calls without a reply the connection is dropped. Every Redis call of the service
goes through here: /feedback once had a redis-py client of its own (a connection per concurrent
call), and under load its clicks were refused on a healthy Redis (issue 17).

URLs: redis://[[user]:password@]host[:port][/db], unix://path[?db=N&password=...], and rediss://
(TLS) with the settings of TLS_OPTIONS in its query, e.g.
rediss://:pw@redis:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/c.key.
With MAILREC_REDIS_CLUSTER=1, `ClusterClient` (below) speaks to a Redis Cluster through one
`RespClient` per master; `connect` builds the one or the other.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Reply = bytes | int | list[Any] | None
# rediss:// URL query parameters: a CA bundle file, a client certificate and its key, whether the
# server's certificate is required (none, optional, required: the default), whether its name is
# checked (true by default when required)
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
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
    tls_options: tuple[tuple[str, str], ...] = ()  # rediss:// query: TLS_OPTIONS

    def ssl_context(self) -> ssl.SSLContext | None:
        """rediss://: the system's CA bundle and hostname check unless the URL says otherwise."""
        if not self.tls:
            return None
        o = dict(self.tls_options)
        context = ssl.create_default_context(cafile=o.get("ssl_ca_certs"))
        if "ssl_certfile" in o:
            context.load_cert_chain(o["ssl_certfile"], o.get("ssl_keyfile"))
        reqs = o.get("ssl_cert_reqs", "required")
        if o.get("ssl_check_hostname", "true" if reqs == "required" else "false").lower() in (
            "false",
            "0",
            "no",
        ):
            context.check_hostname = False
        context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
            reqs, ssl.CERT_REQUIRED
        )
        return context

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
        unknown = sorted(k for k in query if k not in ("db", "password", *TLS_OPTIONS))
        if unknown or (u.scheme == "redis" and any(k in TLS_OPTIONS for k in query)):
            raise ValueError(
                f"unsupported Redis URL parameters {unknown or sorted(query)} (rediss:// takes {TLS_OPTIONS})"
            )
        tls = tuple(sorted((k, v) for k, v in query.items() if k in TLS_OPTIONS))
        host = u.hostname or "localhost"
        return cls(host, u.port or 6379, None, db, username, password, u.scheme == "rediss", tls)


class RespClient:
    """One pipelined connection; see the module docstring."""

    def __init__(self, url: str | Address, connect_timeout: float) -> None:
        self.address = Address.parse(url) if isinstance(url, str) else url
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
                connect = loop.create_connection(
                    lambda: _Protocol(self), a.host or "localhost", a.port, ssl=a.ssl_context()
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


def key_of(command: Command) -> bytes | None:
    """The key that routes `command` on a cluster: the first key (EVAL/EVALSHA: after numkeys;
    the script's other keys must share its slot); None for a command without a key (PING)."""
    name = str(command[0]).upper() if not isinstance(command[0], bytes) else command[0].decode().upper()
    if name in ("EVAL", "EVALSHA"):
        if int(command[2]) == 0:
            return None
        key = command[3]
    elif len(command) > 1 and name not in ("PING", "CLUSTER", "INFO", "ASKING"):
        key = command[1]
    else:
        return None
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterCall:
    """One call of a `ClusterClient`: a task that sends each node its part and puts the replies
    back in order. Its times are those of its parts: written once every part is, answered once
    every part is (both None until then), as `Batch`'s."""

    def __init__(self, client: ClusterClient, commands: list[Command]) -> None:
        loop = asyncio.get_running_loop()
        self.submitted_at = loop.time()
        self.parts: list[Batch] = []
        self.future: asyncio.Future[list[Reply]] = loop.create_task(client.run(commands, self))

    @property
    def sent_at(self) -> float | None:
        sent = [p.sent_at for p in self.parts]
        return max(sent) if sent and None not in sent else None  # type: ignore[type-var]

    @property
    def answered_at(self) -> float | None:
        answered = [p.answered_at for p in self.parts]
        return max(answered) if answered and None not in answered else None  # type: ignore[type-var]


class ClusterClient:
    """A Redis Cluster through `RespClient`s, one pipelined connection per master.

    The slot map (CLUSTER SLOTS) is read from any node that answers, at the first call and again
    after a `MOVED` reply (a failover, a resharding) or a lost connection. A call's commands go to
    the masters owning their keys' slots, each master's part as one pipelined write, the parts in
    parallel. A part answered `MOVED` is routed again on the slot map read again, one answered
    `ASK` (a slot being migrated) is sent to the node named, each command after an ASKING; at
    most `REDIRECTS` times. Such a part is sent again whole, as only its first error is seen: a
    command of it that had run runs again, which the service's commands allow (reads, SET of a
    vector; SET NX and the click script change nothing the second time, and are calls of their
    own). Commands without a key (PING) go to one master. Commands of one call may well
    land on different nodes: only a command with several keys (the click script) needs them in
    one slot, which the keys' `{user}` hash tag gives. The URL names any node; a database other
    than 0 is refused (a cluster has only db 0).
    """

    REDIRECTS = 3

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.seed = Address.parse(url)
        if self.seed.db != 0:
            raise ValueError("a Redis Cluster has only database 0: drop it from MAILREC_REDIS_URL")
        self.connect_timeout = connect_timeout
        self.nodes: dict[tuple[str, int], RespClient] = {}
        self.slots: list[tuple[str, int] | None] = [None] * 16384
        self.stale = True
        self._refreshing: asyncio.Task[None] | None = None

    def node(self, host: str, port: int) -> RespClient:
        found = self.nodes.get((host, port))
        if found is None:
            seed = self.seed
            address = Address(host, port, None, 0, seed.username, seed.password, seed.tls, seed.tls_options)
            found = self.nodes[(host, port)] = RespClient(address, self.connect_timeout)
        return found

    def call(self, commands: list[Command]) -> ClusterCall:
        return ClusterCall(self, commands)

    async def refresh(self) -> None:
        """Read the slot map again (one refresh at a time; callers share it)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def _refresh(self) -> None:
        seed = (self.seed.host or "localhost", self.seed.port)
        candidates = [*self.nodes, seed] if seed not in self.nodes else [*self.nodes]
        last: BaseException | None = None
        for host, port in candidates:
            try:
                (rows,) = await self.node(host, port).submit([("CLUSTER", "SLOTS")])
            except (RedisConnectionError, ResponseError, OSError) as exc:
                last = exc
                continue
            if not isinstance(rows, list):
                raise RedisConnectionError(f"unreadable CLUSTER SLOTS reply: {rows!r}")
            slots: list[tuple[str, int] | None] = [None] * 16384
            for row in rows:
                start, end, master = int(row[0]), int(row[1]), row[2]
                owner = (master[0].decode() or host, int(master[1]))
                self.node(*owner)
                for slot in range(start, end + 1):
                    slots[slot] = owner
            self.slots = slots
            self.stale = False
            return
        raise RedisConnectionError(f"no node of the Redis Cluster answered CLUSTER SLOTS: {last!r}")

    def owner(self, command: Command) -> tuple[str, int]:
        key = key_of(command)
        if key is None:
            found = next((o for o in self.slots if o is not None), None)
        else:
            found = self.slots[key_slot(key)]
        if found is None:
            self.stale = True
            raise RedisConnectionError("no node serves the slot of this command (cluster down?)")
        return found

    async def run(self, commands: list[Command], call: ClusterCall) -> list[Reply]:
        replies: list[Reply] = [None] * len(commands)
        todo = list(range(len(commands)))  # the commands still without their reply
        redirect: dict[int, tuple[str, int]] = {}  # command -> node to ask (ASK), ASKING first
        for attempt in range(self.REDIRECTS + 1):
            if self.stale:
                await self.refresh()
            groups: dict[tuple[str, int], list[int]] = {}
            for i in todo:
                groups.setdefault(redirect.get(i) or self.owner(commands[i]), []).append(i)
            parts = []
            for node, indexes in groups.items():
                sent: list[Command] = []
                positions = []  # where each command's reply is in the part's replies
                for i in indexes:
                    if i in redirect:
                        sent.append(("ASKING",))
                    positions.append(len(sent))
                    sent.append(commands[i])
                parts.append((indexes, self.node(*node).call(sent), positions))
            call.parts = [batch for _, batch, _ in parts]
            results = await asyncio.gather(*(b.future for _, b, _ in parts), return_exceptions=True)
            todo, redirect = [], {}
            for (indexes, _, positions), result in zip(parts, results, strict=True):
                if isinstance(result, ReplyError) and attempt < self.REDIRECTS:
                    moved = str(result).split()
                    if moved[0] == "MOVED":  # the slot map changed: read it again, route again
                        self.stale = True
                        todo += indexes  # the whole part again: its first error is all we see
                        continue
                    if moved[0] == "ASK":  # a slot being migrated: to the node named
                        host, _, port = moved[2].rpartition(":")
                        target = (host or (self.seed.host or "localhost"), int(port))
                        redirect.update(dict.fromkeys(indexes, target))
                        todo += indexes
                        continue
                if isinstance(result, RedisConnectionError):
                    self.stale = True  # a node lost: the next call reads the slot map again
                if isinstance(result, BaseException):
                    raise result
                assert isinstance(result, list)
                for i, at in zip(indexes, positions, strict=True):
                    replies[i] = result[at]
            if not todo:
                return replies
        raise RedisConnectionError("too many cluster redirections")

    def submit(self, commands: list[Command]) -> asyncio.Future[list[Reply]]:
        return self.call(commands).future

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in self.nodes.values():
            client.close()


def connect(url: str, cluster: bool, connect_timeout: float) -> RespClient | ClusterClient:
    """The client for MAILREC_REDIS_URL: one Redis, or a Redis Cluster (MAILREC_REDIS_CLUSTER=1)."""
    return ClusterClient(url, connect_timeout) if cluster else RespClient(url, connect_timeout)
