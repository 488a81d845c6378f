"""The candidate-quality report: the 1% target judged per run, on new users."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.candidate_quality import main, markdown
from tests.conftest import TinyRun


def _row(name: str, whole: float, stage: float) -> dict[str, Any]:
    side = {
        "whole_ndcg@10": whole,
        "stage_ndcg@10": stage,
        "relative": stage / whole - 1,
        "recall_of_top100": 0.99,
        "rows_ranked": 430.0,
        "users": 10,
    }
    return {"run": name, "model": "mail", "new": side, "old": side}


def _result(*rows: dict[str, Any]) -> dict[str, Any]:
    options = {"retrieve": 300, "probes": 128, "popular": 100}
    return {"command": "x", "date": "d", "loadavg": [0.1], "options": options, "runs": list(rows)}


def test_target_met_only_when_every_run_is_within_one_percent() -> None:
    assert "target met on every run (2 runs)" in markdown(_result(_row("a", 0.4, 0.4), _row("b", 0.4, 0.398)))
    text = markdown(_result(_row("a", 0.4, 0.4), _row("b", 0.4, 0.39)))
    assert "target NOT met" in text and "-2.500%" in text and "1.00e-02" in text


def test_clicked_rows_name_the_path_their_users_take() -> None:
    """A row with fewer clicks known than the cold checkpoint's `clicks` went through the prior's
    rows (unless --prior-clicked 0), the others through the search; 1% is judged on every row."""
    row = _row("a", 0.4, 0.4)
    row["cold_clicks"] = 6
    row["revealed"] = {
        "1": {**row["new"], "stage_ndcg@10": 0.399, "relative": -0.0025},
        "10": {**row["new"], "stage_ndcg@10": 0.38, "relative": -0.05},
    }
    result = _result(row)
    result["options"]["prior_clicked"] = 50
    text = markdown(result)
    assert "| a | 1 | prior | 10 |" in text and "| a | 10 | search | 10 |" in text
    assert "-5.000%; within 1% NOT on every row" in text
    result["options"]["prior_clicked"] = 0
    assert "| a | 1 | search |" in markdown(result)
    del row["revealed"]["10"]
    assert "within 1% on every row" in markdown(result)


def test_a_trained_run_is_measured_with_clicks_known(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The whole command on a tiny run: with clicks known, the users the cold checkpoint scores
    are ranked over the prior's rows (about --prior-clicked of them), the others over the search's."""
    out = tmp_path / "cq"
    args = ["--runs", str(tiny_run("mail", "base")), "--data-dir", str(tmp_path), "--out", str(out)]
    assert main([*args, "--prior-clicked", "12", "--reveal", "1", "6"]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["runs"][0]
    assert row["cold_clicks"] == 6
    prior, search = row["revealed"]["1"], row["revealed"]["6"]
    assert prior["users"] > 0 and search["users"] > 0
    assert prior["rows_ranked"] <= 12 + 1 + 1  # the prior's rows and room for the click, minus it
    assert search["rows_ranked"] > 12 + 6 + 6
    assert "| run-mail-base" in out.with_suffix(".md").read_text()
