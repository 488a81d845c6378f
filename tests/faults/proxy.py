"""A delaying TCP proxy for the fault suite: Redis answers slowly, its connections stay up.

Between the service and a real redis-server on the loopback. What the service sends goes through
at once; what Redis sends back is handed on `delay_s` after it arrived, in order (a slow network
or a slow Redis, not a stalled one: replies keep coming). Its own event loop, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from benchmarks.harness.processes import free_port

CHUNK = 65536


class DelayProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0  # read for each chunk from Redis: set it any time
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, "127.0.0.1", self.port)

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(self._forward(client_r, redis_w), self._delayed(redis_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (client_w, redis_w):
                w.close()

    async def _forward(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(CHUNK):
            w.write(data)
            await w.drain()
        w.close()

    async def _delayed(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Each chunk `delay_s` after it came, in order: a sender task works off the queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not data:
                    w.close()
                    return
                w.write(data)
                await w.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await r.read(CHUNK)
                queue.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
