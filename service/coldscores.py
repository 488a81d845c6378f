"""Cold users' whole-catalog scores, remembered per model: the same attributes, the same scores.

To the towers a cold user (no history in the request, no stored click) is their encoded attributes
(the user id among them: out of vocabulary for every new user) and context (hour and weekday), and
nothing else: the virtual behavior is a function of the attributes, the gate is fixed. So every
cold request with the same encoded attributes and context gets the same score for every item, and
one pass over the catalog answers all of them: with candidates, by indexing it; without, by the
top k of the whole catalog, exact where the candidate stage (`service.candidates`) approximates it.
MovieLens' attributes (age group, gender, occupation, zip region) take a few hundred values among
real users, so after warm-up most new users' requests are answered this way
(`benchmarks/results/serving.md` measures the hit rate on real users' attributes, and the path
without it).

- Admission: a key is filled on its second miss while the doorkeeper (the last `doorkeeper` keys
  that missed) still holds it, so a stream of keys seen once (returning users calling without
  history, each with their own id) costs a dict insert per request, never a pass over the catalog.
- Fills run off the request path: the request that misses is answered as before (the given
  candidates, or the candidate stage), and a task scores the catalog in chunks of `chunk` rows.
  One fill runs at a time, and after each chunk it sleeps `pace` times as long as the chunk took,
  so fills take at most 1 / (1 + pace) of the event loop (a quarter by default) however many keys
  are new at once: a whole hour's keys change together (the context is part of the key), and with
  every fill running at once the first measured burst starved the loop long enough for Redis
  replies to be read late, the breaker to open and impressions to go unrecorded. At most
  `max_pending` fills wait at once.
- Memory: least recently used keys go first once the scores held pass `max_bytes`.
- Never stale: the memo belongs to one loaded model (`ServedModel.cold`); a reload brings a new,
  empty one.
- The Redis vector cache stays as it was: each entry keeps the virtual behavior it was scored with,
  and a hit whose Redis lookup missed (Redis restarted, the key evicted) writes it back, as a
  computed vector would be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from service.contract import Encoded, FloatArray, IntArray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColdScoreOptions:
    max_mb: float = 64.0  # per loaded model; 0 turns the memo off
    max_items: int = 20_000  # catalogs larger than this are not memoized (a fill would cost too much)
    chunk: int = 256  # rows per ranker call of a fill
    pace: float = 3.0  # after each chunk, sleep this many times as long as it took
    doorkeeper: int = 65_536  # keys that missed once, remembered until their second miss
    max_pending: int = 64  # fills waiting at once; more misses are answered without scheduling one


DEFAULTS = ColdScoreOptions()


@dataclass(frozen=True)
class Remembered:
    scores: FloatArray  # (I + 1,) by catalog row; row 0 (PAD) -inf
    virtual: FloatArray | None  # the virtual behavior they were scored with (None: no zero-shot tower)

    @property
    def nbytes(self) -> int:
        return self.scores.nbytes + (self.virtual.nbytes if self.virtual is not None else 0)


def memo_key(enc: Encoded) -> bytes:
    """What a cold user's scores depend on: the encoded attributes and context."""
    return enc.user_attrs.tobytes() + b"|" + enc.context.tobytes()


class ColdScores:
    """Whole-catalog scores (and the virtual behavior behind them) by `memo_key`."""

    def __init__(self, rows: IntArray, options: ColdScoreOptions = DEFAULTS) -> None:
        self.rows = rows  # (I,) catalog rows 1..I
        self.options = options
        self.max_bytes = int(options.max_mb * 1024 * 1024)
        self._scores: OrderedDict[bytes, Remembered] = OrderedDict()
        self._missed: OrderedDict[bytes, None] = OrderedDict()
        self.pending: dict[bytes, asyncio.Task[None]] = {}
        self._one_at_a_time = asyncio.Lock()
        self.bytes = 0

    @staticmethod
    def applies(n_items: int, options: ColdScoreOptions) -> bool:
        """Whether a catalog of `n_items` gets a memo under `options`."""
        entry = (n_items + 1) * 4
        return options.max_mb > 0 and n_items <= options.max_items and entry <= options.max_mb * 1024 * 1024

    def __len__(self) -> int:
        return len(self._scores)

    def get(self, key: bytes) -> Remembered | None:
        found = self._scores.get(key)
        if found is not None:
            self._scores.move_to_end(key)
        return found

    def put(self, key: bytes, entry: Remembered) -> None:
        old = self._scores.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._scores[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes and self._scores:
            _, dropped = self._scores.popitem(last=False)
            self.bytes -= dropped.nbytes

    def admit(self, key: bytes) -> bool:
        """Called on a miss: True when a fill of `key` should start now (its second miss, none
        pending for it, room in the queue)."""
        if key in self.pending:
            return False
        if key in self._missed:  # its second miss
            del self._missed[key]
            return len(self.pending) < self.options.max_pending
        self._missed[key] = None
        while len(self._missed) > self.options.doorkeeper:
            self._missed.popitem(last=False)
        return False

    def fill(
        self, key: bytes, score: Callable[[IntArray], Awaitable[FloatArray]], virtual: FloatArray | None
    ) -> None:
        """Score the catalog for `key` in a task, `score(rows)` per chunk (the request's own user
        inputs, `virtual` among them, bound in), and remember the result; an error is logged and the
        key stays unfilled."""
        self.pending[key] = asyncio.get_running_loop().create_task(self._fill(key, score, virtual))

    def cancel(self) -> None:
        """Stop the fills under way (at shutdown)."""
        for task in self.pending.values():
            task.cancel()

    async def _fill(
        self, key: bytes, score: Callable[[IntArray], Awaitable[FloatArray]], virtual: FloatArray | None
    ) -> None:
        try:
            async with self._one_at_a_time:
                out = np.full(len(self.rows) + 1, -np.inf, np.float32)
                step = self.options.chunk
                for start in range(0, len(self.rows), step):
                    rows = self.rows[start : start + step]
                    started = time.perf_counter()
                    out[rows] = await score(rows)
                    # requests run meanwhile: fills take at most 1 / (1 + pace) of the loop
                    await asyncio.sleep((time.perf_counter() - started) * self.options.pace)
                self.put(key, Remembered(out, virtual))
        except Exception:
            log.exception("cold scores: filling one key failed; its requests are scored as before")
        finally:
            self.pending.pop(key, None)
