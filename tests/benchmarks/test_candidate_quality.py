"""The candidate-quality report: the 1% target judged per run, on new users."""

from __future__ import annotations

from typing import Any

from benchmarks.candidate_quality import markdown


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
