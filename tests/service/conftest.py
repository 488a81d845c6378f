"""A real service (uvicorn subprocess) on a real Redis, serving tiny synthetic bundles."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import RedisClusterProcesses, RedisServer, ServiceProcess

ADMIN_TOKEN = "test-admin-token"
NEW_USER = {"segment": "s1", "age": 31, "gender": "F"}


@dataclass
class Live:
    service: ServiceProcess
    redis: RedisServer | RedisClusterProcesses
    prefix: str
    bundles: dict[str, Path]

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def single(self) -> RedisServer:
        """The one redis-server, for the tests that stop, pause or kill it (not on a cluster)."""
        assert isinstance(self.redis, RedisServer)
        return self.redis

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        """Stop the service, then its Redis."""
        self.service.stop()
        self.redis.close()


def tiny_bundles(bundle_factory: Callable[..., Path]) -> dict[str, Path]:
    """The tests' experiment: variant -> tiny bundle."""
    return {"control": bundle_factory("control", "base"), "mail": bundle_factory("mail", "base")}


def service_env(experiments: Path, redis_url: str, prefix: str, **env: str) -> dict[str, str]:
    """A test service's settings: `experiments` served on the Redis at `redis_url` under `prefix`,
    then `env`."""
    return {
        "MAILREC_EXPERIMENTS": str(experiments),
        "MAILREC_REDIS_URL": redis_url,
        "MAILREC_REDIS_PREFIX": prefix,
        "MAILREC_ADMIN_TOKEN": ADMIN_TOKEN,
        "MAILREC_DEVICE": "cpu",
        "MAILREC_MAX_HISTORY": "50",
        # generous on a loaded test machine, so an impression write is never skipped for time;
        # tests/service/test_redis_outage.py checks the 20 ms default on its own service
        "MAILREC_REDIS_BUDGET_MS": "250",
        **env,
    }


def start_live(
    tmp: Path,
    bundle_factory: Callable[..., Path],
    via: Callable[[RedisServer], str] | None = None,
    launcher: bool = False,
    **env: str,
) -> Live:
    """The service on a Redis of its own; `via(redis)` gives the URL the service is handed instead
    of the Redis's own (a proxy in front of it); `launcher`: started by `python -m service`."""
    bundles = tiny_bundles(bundle_factory)
    experiments = write_experiment(tmp / "experiments.toml", bundles)
    redis_server = RedisServer().start()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    redis_url = via(redis_server) if via is not None else redis_server.url
    service = ServiceProcess(service_env(experiments, redis_url, prefix, **env), launcher=launcher)
    try:
        service.start()
    except Exception:
        redis_server.close()
        raise
    return Live(service, redis_server, prefix, bundles)


@pytest.fixture(scope="module")
def live(tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = start_live(tmp_path_factory.mktemp("live"), tiny_bundle)
    yield env
    env.close()


@pytest.fixture()
def client(live: Live) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c
