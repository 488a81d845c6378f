"""The quality gate of benchmarks/quantization.py: int8 the default only on every run within 0.1%."""

from __future__ import annotations

from typing import Any

from benchmarks.quantization import decide, markdown


def _row(run: str, new_ndcg: float, old_auc: float = 0.8) -> dict[str, Any]:
    fp32 = {g: {"auc": 0.8, "gauc": 0.7, "ndcg@10": 0.4, "hr@10": 0.5} for g in ("new", "old", "all")}
    int8 = {g: dict(m) for g, m in fp32.items()}
    int8["new"]["ndcg@10"], int8["old"]["auc"] = new_ndcg, old_auc
    return {
        "run": run,
        "fp32": fp32,
        "int8": int8,
        "int8_parity_at_export": None,
        "fp32_vs_metrics_json": 0.0,
    }


def test_int8_becomes_the_default_only_when_every_planned_run_passes() -> None:
    close = [_row("control-s0", 0.40036), _row("mail-s0", 0.39964, 0.80079)]  # within 0.1%
    assert decide(close, planned=2)["default_precision"] == "int8"
    partial = decide(close, planned=10)
    assert partial["default_precision"] == "fp32" and partial["verdict"].startswith("not established")
    worse = decide([*close, _row("control-s1", 0.3995)], planned=3)  # -0.125%
    assert worse["default_precision"] == "fp32" and "misses" in worse["verdict"]
    assert [(f["run"], f["metric"]) for f in worse["failing"]] == [("control-s1", "new ndcg@10")]
    assert "1 of the gaps are losses" in worse["one_sided"]
    better = decide([*close, _row("control-s1", 0.4005)], planned=3)  # +0.125%: the gate is two-sided
    assert (
        better["default_precision"] == "fp32" and "every gap over the gate is a gain" in better["one_sided"]
    )


def test_the_report_shows_the_decision_and_each_run() -> None:
    rows = [_row("control-s0", 0.3995)]
    report = {
        "command": "python -m benchmarks.quantization",
        "machine": {"cpu": "x86_64", "cores": 2, "loadavg": [0.1, 0.1, 0.1]},
        "decision": decide(rows, planned=1),
        "rows": rows,
        "speed": None,
    }
    text = markdown(report)
    assert "## Decision: int8 stays an option" in text and "| control-s0 | 0.4000 -> 0.3995 (-0.125%)" in text
