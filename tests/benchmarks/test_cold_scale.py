"""The cold-scale screen's choice and report (benchmarks.offline.cold_scale), on made-up rows."""

from __future__ import annotations

from typing import Any

from benchmarks.offline.cold_scale import LISTS, choose, markdown


def _row(model: str, seed: int, val: dict[str, float]) -> dict[str, Any]:
    rows = {k: {"val": {"new": v, "new_p10": v}, "test": {"new": v, "new_p10": v}} for k, v in val.items()}
    for name in LISTS:
        rows[name] = {part: {"new": 0.4, "new_p10": 0.4} for part in ("val", "test")}
    return {"model": model, "seed": seed, "seconds": 1.0, "best_epoch": 3, "cold_epoch": 2, "rows": rows}


def test_the_choice_pools_both_models_and_every_seed_on_validation_and_never_looks_past_1() -> None:
    rows = [
        _row("control", 0, {"main|0.0": 0.40, "cold|0.25": 0.45, "cold|1.0": 0.43, "cold|1.25": 0.99}),
        _row("control", 1, {"main|0.0": 0.40, "cold|0.25": 0.41, "cold|1.0": 0.44, "cold|1.25": 0.99}),
        _row("mail", 0, {"main|0.0": 0.40, "cold|0.25": 0.46, "cold|1.0": 0.42, "cold|1.25": 0.99}),
    ]
    chosen, val = choose(rows)
    assert chosen == "cold|0.25"  # 0.44 pooled, against 0.43 for the tower as trained
    assert "cold|1.25" not in val and abs(val["cold|1.0"] - 0.43) < 1e-12
    report = markdown(
        {
            "commands": ["c"],
            "machine": {"cores": 2, "torch": "t"},
            "chosen": chosen,
            "val_means": val,
            "rows": rows,
        }
    )
    assert "**Chosen on validation: cold, a = 0.25**" in report
    assert "| **cold, a = 0.25** |" in report and "| cold, a = 1.25 |" in report
