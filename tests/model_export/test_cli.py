"""The training CLI's help and its console script (no training here: see test_export.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from model_export.cli import main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "onnxruntime", "model_export.train")
# run the CLI and report, even as it exits, which heavy modules the help pulled in
PROBE = (
    "import sys\n"
    "from model_export.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    f"    print('imported:', [m for m in {HEAVY!r} if m in sys.modules])\n"
)


@pytest.mark.parametrize("command", [[], ["train"], ["download"], ["export"], ["evaluate"]])
def test_help_prints_usage_and_does_nothing_else(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command, "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m model_export {' '.join(command)}".rstrip())
    assert "imported: []" in done.stdout  # no torch, no data code: help imports nothing heavy
    assert done.stderr == ""  # no logging configured, nothing downloaded
    assert list(tmp_path.iterdir()) == []  # no file or cache folder written


def test_help_leaves_logging_alone(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    handlers = list(logging.getLogger().handlers)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--dataset" in capsys.readouterr().out
    assert logging.getLogger().handlers == handlers


def test_console_script_is_the_cli() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["mailrec-train"].partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_the_console_script_names_itself_in_its_help() -> None:
    script = Path(sys.executable).parent / "mailrec-train"
    if not script.exists():
        pytest.skip("the package's console scripts are not installed in this environment")
    done = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mailrec-train train")


def test_catalog_flags_with_the_rating_task_are_refused_before_any_work(tmp_path: Path) -> None:
    """The rating task reads none of the catalog task's flags: naming one is a mistake, said at once."""
    with pytest.raises(SystemExit, match="--negatives, --loss only apply to --task catalog"):
        main(
            [
                "train",
                "--task",
                "rating",
                "--loss",
                "softmax",
                "--negatives",
                "8",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit, match="loss softmax: at least one sampled negative"):
        main(["train", "--dataset", "synthetic", "--negatives", "0", "--out", str(tmp_path / "c")])


@pytest.mark.parametrize("widths", ["", "128,", "0", "-4,2", "wide"])
def test_bad_hidden_widths_are_refused_before_any_work(
    widths: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "synthetic", "--hidden", widths, "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--hidden" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_help_states_the_defaults_training_uses(capsys: pytest.CaptureFixture[str]) -> None:
    """The help names the budget and widths as text (to stay light: no torch at --help), so it is
    checked against the configs' defaults here."""
    import re

    from model_export.model import RankerConfig
    from model_export.train import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"at most this many epochs (default {TrainConfig().epochs})" in text
    assert f"better validation score (default {TrainConfig().patience})" in text
    widths = re.search(r"hidden layers, widest first \(default ([0-9,]+)", text)
    assert widths is not None and widths.group(1) == ",".join(map(str, RankerConfig().hidden))
