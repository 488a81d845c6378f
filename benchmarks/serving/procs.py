"""The processes of one benchmark run: redis-server, the service, the floor; each pinned by taskset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks.harness.processes import REPO, Proc, ServiceProcess, free_port, http_ok, pinned


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def start_service(
    workdir: Path, experiments: Path, redis_url: str, cpu: str | None, workers: int = 1, **extra: str
) -> ServiceProcess:
    """`python -m service` with the given number of workers, on a free port."""
    env = {
        "MAILREC_EXPERIMENTS": str(experiments),
        "MAILREC_REDIS_URL": redis_url,
        "MAILREC_DEVICE": "cpu",
        "MAILREC_LOG_LEVEL": "WARNING",
        **extra,
    }
    service = ServiceProcess(env, workers=workers, launcher=True, cpu=cpu, workdir=workdir)
    service.env.setdefault("MAILREC_REDIS_PREFIX", f"bench{service.port}")
    return service.start(timeout=120)


def start_floor(workdir: Path, response_file: Path, cpu: str | None) -> tuple[Proc, str]:
    """The reference FastAPI app on the service's uvicorn settings (uvloop, httptools, no access log)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAILREC_FLOOR_RESPONSE": str(response_file)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.serving.floor:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    proc = Proc("floor", pinned(cmd, cpu), workdir / f"floor-{port}.log", env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_until(lambda: http_ok(f"{url}/readyz"), timeout=120)
    return proc, url
