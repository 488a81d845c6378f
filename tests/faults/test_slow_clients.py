"""Slow clients: 500 idle keep-alive connections and a few slowloris bodies held open while other
clients call /recommend; the service keeps answering them, its memory stays bounded, and the
slow bodies are cut (408, connection closed) once past MAILREC_BODY_TIMEOUT_S."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.faults.process import rss_mb
from tests.faults.test_redis_faults import LOAD_USER
from tests.service.conftest import Live, start_live

pytestmark = pytest.mark.slow  # waits out the keep-alive and body timeouts

IDLE = 500
SLOWLORIS = 5
HOLD_S = 14.0  # past the body timeout (10 s, the default) and the keep-alive timeout (5 s)
TRICKLE_S = 0.5  # a slowloris sends one byte this often
SANE_S = 1.0  # another client's request answered within this, or the scenario fails
RSS_BOUND_MB = 64.0


def keep_alive_connection(port: int) -> socket.socket:
    """A connection that made one request, read its answer, and stays open doing nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /livez HTTP/1.1\r\nHost: mailrec\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        chunk = s.recv(4096)
        assert chunk, "closed before answering"
        answer += chunk
    return s


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


@dataclass
class Slowloris:
    """Headers of a POST /recommend, then its body one byte every TRICKLE_S, until HOLD_S or the
    service answers and closes."""

    port: int
    answer: bytes = b""
    sent: int = 0
    cut_after_s: float | None = None
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        body = json.dumps(LOAD_USER).encode().ljust(1000)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(
                b"POST /recommend HTTP/1.1\r\nHost: mailrec\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            s.settimeout(TRICKLE_S)
            while time.monotonic() - started < HOLD_S and self.sent < len(body):
                try:
                    s.sendall(body[self.sent : self.sent + 1])
                    self.sent += 1
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:  # reset: the service closed it
                    self.cut_after_s = time.monotonic() - started
                    return
                self.answer += data
                if not data:  # closed by the service
                    self.cut_after_s = time.monotonic() - started
                    return

    def join(self) -> None:
        self._thread.join()


@pytest.fixture()
def launched(tiny_bundle: Callable[..., Path], tmp_path: Path) -> Iterator[Live]:
    """The service as its image starts it (`python -m service`), with its default limits."""
    env = start_live(tmp_path, tiny_bundle, launcher=True)
    yield env
    env.service.stop()
    env.redis.close()


def test_slow_clients_idle_connections_and_slowloris_bodies(
    launched: Live, record: Callable[[str, str, str], None]
) -> None:
    live = launched
    assert live.service.proc is not None
    pid, port = live.service.proc.pid, live.service.port
    with live.client() as client:
        for _ in range(50):  # warm: the vector cached, the allocator's pools in use
            client.post("/recommend", json=LOAD_USER)
    rss_before = rss_mb(pid)
    idle = [keep_alive_connection(port) for _ in range(IDLE)]
    loris = [Slowloris(port) for _ in range(SLOWLORIS)]
    latencies: list[float] = []
    statuses: list[int] = []
    rss_peak = rss_before
    started = time.monotonic()
    while time.monotonic() - started < HOLD_S:
        with httpx.Client(base_url=live.url, timeout=30) as other:  # a new client, a new connection
            t = time.perf_counter()
            statuses.append(other.post("/recommend", json=LOAD_USER).status_code)
            latencies.append(time.perf_counter() - t)
        rss_peak = max(rss_peak, rss_mb(pid))
        time.sleep(0.05)
    for slow in loris:
        slow.join()
    closed = sum(closed_by_server(conn) for conn in idle)
    for conn in idle:
        conn.close()
    cut = [slow.cut_after_s for slow in loris if slow.cut_after_s is not None]
    answers = {slow.answer.split(b"\r\n", 1)[0].decode(errors="replace") for slow in loris}
    latencies.sort()
    record(
        f"slow clients: {IDLE} idle keep-alive connections and {SLOWLORIS} slowloris bodies "
        f"(a byte every {TRICKLE_S} s) for {HOLD_S:.0f} s",
        "the service keeps answering other clients; memory bounded",
        f"{len(statuses)} requests from other clients meanwhile, {statuses.count(200)} answered 200, "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms; RSS "
        f"{rss_before:.0f} MB before, peak {rss_peak:.0f} MB (+{rss_peak - rss_before:.1f}); idle "
        f"connections closed by the service: {closed} of {IDLE}; slowloris bodies cut: {len(cut)} of "
        f"{SLOWLORIS} (after {min(cut, default=0):.1f}-{max(cut, default=0):.1f} s, "
        f"{max(slow.sent for slow in loris)} bytes sent at most), answered {sorted(answers)}",
    )
    assert statuses and set(statuses) == {200}, statuses
    assert latencies[-1] < SANE_S, latencies[-5:]
    assert rss_peak - rss_before < RSS_BOUND_MB
    assert len(cut) == SLOWLORIS, "a slowloris body was held open past the body timeout"
    assert answers == {"HTTP/1.1 408 Request Timeout"}, answers
