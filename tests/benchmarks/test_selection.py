"""The early-stopping rule comparison (benchmarks.offline.selection), on made-up rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.offline.selection import main, replay


def test_replay_is_trains_early_stopping() -> None:
    # all users' score peaks at 3 and stalls two epochs: stop at 5, keep 3; new users peak at 2
    assert replay([0.1, 0.2, 0.3, 0.3, 0.25], [0.5, 0.6, 0.4, 0.4, 0.4], patience=2, cap=12) == (5, 3, 2)
    # a curve cut before the rule stops (another rule stopped it) and short of the cap: unknown
    assert replay([0.1, 0.2, 0.3, 0.29], [0.5] * 4, patience=2, cap=12) is None
    # a curve that ran to the cap: the rule's choice within it is known
    assert replay([0.1, 0.2, 0.3, 0.29], [0.5, 0.4, 0.6, 0.6], patience=2, cap=4) == (4, 3, 3)
    # improvements under train's threshold are not improvements
    assert replay([0.2, 0.200001, 0.2], [0.5] * 3, patience=2, cap=12) == (3, 1, 1)


def _row(
    method: str,
    seed: int,
    every: list[float],
    served: list[float],
    new: list[float],
    kept: int,
    old_test: float,
) -> dict[str, Any]:
    group = {"old": {"ndcg@10": old_test}, "new": {"ndcg@10": 0.4}}
    return {
        "cell": {
            "dataset": "ml-100k",
            "protocol": "strict",
            "ranker": "base",
            "method": method,
            "seed": seed,
            "onboarding_noise": None,
        },
        "best_epoch": kept,
        "losses": [
            {"epoch": i + 1, "val_ndcg": a, "val_ndcg_served": b, "val_ndcg_new": c}
            for i, (a, b, c) in enumerate(zip(every, served, new, strict=True))
        ],
        "ranking": {"val": group, "test": group},
    }


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_of_the_same_epochs_are_replayed_others_needed_and_a_contradiction_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = ["--epochs", "4"]
    every, new = [0.1, 0.2, 0.3, 0.31], [0.5, 0.4, 0.3, 0.3]
    same = _row("control", 0, every, [0.1, 0.2, 0.3, 0.31], new, 4, 0.2)  # both rules keep 4
    other = _row("mail", 0, every, [0.1, 0.2, 0.35, 0.31], new, 3, 0.2)  # served keeps 3, all users 4
    served = _write(tmp_path / "s.jsonl", [same, other])
    empty = _write(tmp_path / "a.jsonl", [])
    assert main(["--served", str(served), "--all", str(empty), "--missing", *cap]) == 0
    assert capsys.readouterr().out.split() == ["base", "mail", "0"]
    # the all-users row of the mail cell, trained: now both pair, and the table says so
    trained = _row("mail", 0, every, every, new, 4, 0.1)
    out = tmp_path / "cmp"

    def compare(every_rule: list[dict[str, Any]]) -> int:
        rows = _write(tmp_path / "a.jsonl", every_rule)
        return main(["--served", str(served), "--all", str(rows), "--out", str(out), *cap])

    assert compare([trained]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    mail = next(r for r in report["records"] if r["method"] == "mail")
    assert mail["kept"] == {"ndcg": [4], "ndcg-served": [3]} and mail["source"] == ["trained"]
    assert mail["test_old"]["lift_pct"] == pytest.approx(100.0)  # 0.2 over 0.1
    control = next(r for r in report["records"] if r["method"] == "control")
    assert control["source"] == ["replayed"] and control["test_old"]["lift_pct"] == 0.0
    # a trained all-users row that replays to the served row's epochs must equal it
    wrong = _row("control", 0, every, every, new, 4, 0.25)
    assert compare([wrong]) == 1
    assert "disagree" in out.with_suffix(".md").read_text()
