"""wrk (Debian's) driven by a generated Lua script: fixed or per-request bodies, percentiles as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class Load:
    """What wrk sends: a fixed body, or Lua code defining `request()` for a new body each time."""

    headers: dict[str, str]
    body: str | None = None
    lua: str | None = None
    path: str = "/recommend"


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # socket errors and non-2xx/3xx answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lua_long_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def script(load: Load) -> str:
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[ {lua_long_string(k)} ] = {lua_long_string(v)}" for k, v in load.headers.items()]
    if load.body is not None:
        lines.append(f"wrk.body = {lua_long_string(load.body)}")
    if load.lua is not None:
        lines.append(load.lua)
    return "\n".join(lines) + "\n" + DONE


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `bash scripts/system-deps.sh wrk` (Debian package wrk)")
    return found


def run_wrk(
    url: str, load: Load, connections: int, seconds: float, workdir: Path, cpu: str | None = None
) -> WrkResult:
    """One wrk run with one thread; `cpu` pins it (taskset list, e.g. "1")."""
    lua = workdir / "load.lua"
    lua.write_text(script(load))
    cmd = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
    ]
    cmd.append(url + load.path)
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = done.stdout + done.stderr
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    secs = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return WrkResult(
        connections,
        r["requests"],
        round(secs, 3),
        round(r["requests"] / secs, 1),
        r["p50_us"] / 1000,
        r["p90_us"] / 1000,
        r["p99_us"] / 1000,
        r["p999_us"] / 1000,
        round(r["mean_us"] / 1000, 3),
        r["max_us"] / 1000,
        errors,
    )
