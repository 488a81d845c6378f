"""Soak: 200,000 /recommend calls over mixed users (new and returning, cold and with history,
many attribute sets, k from 5 to 20) from wrk; the service's memory, open file descriptors and
asyncio tasks after the run against what they were after a warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.metrics import metric_value
from tests.faults.load import WrkRun, lua_body_script, lua_string, run_wrk
from tests.faults.process import open_fds, rss_mb
from tests.service.conftest import NEW_USER, Live

pytestmark = pytest.mark.slow  # 200,000 calls

WARM_UP = 20_000
SOAK = 200_000
CONNECTIONS = 8
USERS = 50_000
RSS_RATIO = 1.05

MIXED_USERS = """
math.randomseed(17)
segments = {"s1", "s2", "s3", "s4"}
genders = {"F", "M"}
function request()
  local user = math.random(1, %(users)d)
  local body = string.format(
    '{"user_id": "soak-%%d", "attributes": {"segment": "%%s", "age": %%d, "gender": "%%s"}, "k": %%d',
    user, segments[user %% 4 + 1], 18 + user %% 50, genders[user %% 2 + 1], 5 + user %% 16)
  if user %% 3 == 0 then  -- a third bring a history of their own
    body = body .. string.format(', "history": ["%%s", "%%s"]',
      items[user %% #items + 1], items[(user * 7) %% #items + 1])
  end
  return wrk.format(nil, nil, nil, body .. "}")
end
"""


@dataclass(frozen=True)
class Held:
    rss_mb: float
    fds: int
    tasks: float


def held(pid: int, client: httpx.Client) -> Held:
    """What the process holds once the load is over (the connections wrk left closed)."""
    time.sleep(2)
    tasks = metric_value(client.get("/metrics").text, "mailrec_asyncio_tasks")
    return Held(rss_mb(pid), open_fds(pid), tasks)


def served(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "mailrec_http_requests_total", route="/recommend")


def calls(live: Live, client: httpx.Client, lua: str, n: int, seconds: int, workdir: Path) -> WrkRun:
    """`n` /recommend calls from wrk (or as many as `seconds` allow)."""
    target = served(client) + n
    script = lua_body_script(request_lua=lua, limit=n)
    return run_wrk(
        live.url + "/recommend", script, CONNECTIONS, seconds, workdir, until=lambda: served(client) >= target
    )


def test_soak_200k_recommend_calls_over_mixed_users(
    live: Live, tmp_path: Path, record: Callable[[str, str, str], None]
) -> None:
    assert live.service.proc is not None
    pid = live.service.proc.pid
    with live.client() as client:
        first = client.post("/recommend", json={"user_id": "soak-items", "attributes": NEW_USER, "k": 20})
        items = [i["item_id"] for i in first.json()["items"]]
        lua = f"items = {{{', '.join(lua_string(i) for i in items)}}}\n" + MIXED_USERS % {"users": USERS}
        warm = calls(live, client, lua, WARM_UP, 120, tmp_path)
        before = held(pid, client)
        soak = calls(live, client, lua, SOAK, 540, tmp_path)
        after = held(pid, client)
    ratio = after.rss_mb / before.rss_mb
    record(
        f"soak: {SOAK:,} /recommend calls over mixed users ({USERS:,} ids, a third with a history), "
        f"{CONNECTIONS} connections, after a {WARM_UP:,}-call warm-up",
        "RSS after / RSS after warm-up <= 1.05; no growth in open file descriptors or asyncio tasks",
        f"{soak.requests:,} requests in {soak.seconds:.0f} s ({soak.rps:.0f}/s), {soak.non_2xx} non-2xx, "
        f"{soak.socket_errors} socket errors, p50 {soak.p50_ms:.1f} ms, p99 {soak.p99_ms:.1f} ms; RSS "
        f"{before.rss_mb:.1f} -> {after.rss_mb:.1f} MB ({ratio:.3f}); open fds {before.fds} -> {after.fds}; "
        f"asyncio tasks {before.tasks:.0f} -> {after.tasks:.0f}",
    )
    assert warm.non_2xx == 0 and soak.non_2xx == 0 and soak.socket_errors == 0, soak.statuses
    assert soak.requests >= SOAK, f"only {soak.requests} requests in the time given"
    assert ratio <= RSS_RATIO
    assert after.fds <= before.fds and after.tasks <= before.tasks
