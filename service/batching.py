"""Micro-batching of ranker calls: concurrent requests share one ONNX call (for the CUDA provider).

On a GPU a ranker call costs a launch whatever its size, so requests that arrive within
`max_wait` of each other are scored together through the bundle's `ranker_batch.onnx` (users
stacked, candidates concatenated, `owner` telling whose each candidate is), up to `max_rows`
candidates per call, on the device thread so the event loop never waits for the device. That thread
is the model registry's (`executor`), shared by every model it loads, so a reload starts no thread;
a batcher given none owns one until `close`. On CPU a request of 100 candidates already gets most of
the batching gain by itself, so `auto` enables this only when the ranker session really runs on CUDA
(`MAILREC_MICROBATCH`).

Scores are those of the one-user graph: ONNX Runtime computes each candidate's row on its own, so
batched and unbatched scores are equal exactly (tested on CPU; checked at export).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from service.contract import Encoded, FloatArray, IntArray
from service.inference import Towers


@dataclass
class Pending:
    encoded: Encoded
    virtual: FloatArray | None
    gate: float
    rows: IntArray
    future: asyncio.Future[FloatArray]


class MicroBatcher:
    """Collects ranker calls for at most `max_wait_s` or `max_rows` candidates, then runs them as one."""

    def __init__(
        self,
        towers: Towers,
        max_wait_s: float,
        max_rows: int,
        observe: Callable[[float], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.towers = towers
        self.max_wait_s = max_wait_s
        self.max_rows = max_rows
        self.observe = observe
        self.calls = 0  # ONNX calls made (each for one batch)
        self._queue: list[Pending] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._owned = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailrec-ranker")

    def close(self) -> None:
        """Stop the batcher's own thread once its calls are done (a shared executor stays open)."""
        if self._owned:
            self._executor.shutdown(wait=False)

    async def score(
        self, encoded: Encoded, virtual: FloatArray | None, gate: float, rows: IntArray
    ) -> FloatArray:
        """The same scores as `Towers.score`, computed together with the calls around this one."""
        loop = asyncio.get_running_loop()
        if self._queue and self._rows + len(rows) > self.max_rows:
            self._flush()  # this call would overflow the batch: send what is there first
        item = Pending(encoded, virtual, gate, rows, loop.create_future())
        self._queue.append(item)
        self._rows += len(rows)
        if self._rows >= self.max_rows or self.max_wait_s <= 0:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await item.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue, self._rows = self._queue, [], 0
        if batch:
            self.calls += 1
            task = asyncio.get_running_loop().run_in_executor(self._executor, self._run, batch)
            task.add_done_callback(lambda done: self._scatter(batch, done))

    def _run(self, batch: list[Pending]) -> list[FloatArray]:
        started = time.perf_counter()
        out = self.towers.score_many([(p.encoded, p.virtual, p.gate, p.rows) for p in batch])
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        return out

    @staticmethod
    def _scatter(batch: list[Pending], done: asyncio.Future[list[FloatArray]]) -> None:
        exc = done.exception()
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            if exc is not None:
                p.future.set_exception(exc)
            else:
                p.future.set_result(done.result()[i])
