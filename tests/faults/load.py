"""Load for the fault suite: wrk (Debian's) on the loopback, one thread, a generated Lua script
that counts every response by status (and, optionally, by the value of one response header).

Bounded: a fixed number of connections for a fixed time, 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

COUNT = """
counts = {}
seen = {}
answered = 0
function response(status, headers, body)
  answered = answered + 1
  if limit ~= nil and answered >= limit then wrk.thread:stop() end
  counts[tostring(status)] = (counts[tostring(status)] or 0) + 1
  if header_name ~= nil then
    local v = tostring(headers[header_name])
    seen[v] = (seen[v] or 0) + 1
  end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local all, hdr = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do all[k] = (all[k] or 0) + v end
    for k, v in pairs(t:get("seen")) do hdr[k] = (hdr[k] or 0) + v end
  end
  local function obj(tbl)
    local parts = {}
    for k, v in pairs(tbl) do table.insert(parts, string.format('"%s": %d', k, v)) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "statuses": %s, "header": %s}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, obj(all), obj(hdr)))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


@dataclass
class WrkRun:
    requests: int
    seconds: float
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: Counter[str] = field(default_factory=Counter)
    header: Counter[str] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not s.startswith("2"))


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        pytest.skip("wrk is not installed (`make test` installs it: scripts/system-deps.sh wrk)")
    return found


def lua_body_script(
    body: str | None = None,
    request_lua: str | None = None,
    header: str | None = None,
    limit: int | None = None,
) -> str:
    """POST with a fixed JSON body, or with `request_lua` (Lua defining `request()`); with `limit`,
    wrk stops once that many responses came (give it `seconds` enough: the run ends at either)."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines.append(f"header_name = {lua_string(header.lower())}" if header else "header_name = nil")
    lines.append(f"limit = {limit}" if limit is not None else "limit = nil")
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    if request_lua is not None:
        lines.append(request_lua)
    return "\n".join(lines) + "\n" + COUNT


def run_wrk(
    url: str,
    script: str,
    connections: int,
    seconds: int,
    workdir: Path,
    until: Callable[[], bool] | None = None,
) -> WrkRun:
    """wrk for `seconds`, or with `until` only until it says so (checked every half second; wrk
    stops on SIGINT and reports what it did)."""
    lua = workdir / f"wrk-{threading.get_ident()}.lua"
    lua.write_text(script)
    cmd = [wrk_binary(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        if until is not None:
            deadline = time.monotonic() + seconds
            while proc.poll() is None and time.monotonic() < deadline and not until():
                time.sleep(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, out)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    return WrkRun(
        r["requests"],
        r["duration_us"] / 1e6,
        r["socket_errors"],
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
        r["max_us"] / 1000,
        Counter(r["statuses"]),
        Counter(r["header"]),
    )


class Background:
    """`run_wrk` in a thread, so the test can inject a fault while it runs."""

    def __init__(self, url: str, script: str, connections: int, seconds: int, workdir: Path) -> None:
        self.result: WrkRun | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, script, connections, seconds, workdir))
        self._thread.start()

    def _run(self, *args: object) -> None:
        try:
            self.result = run_wrk(*args)  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def join(self) -> WrkRun:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
