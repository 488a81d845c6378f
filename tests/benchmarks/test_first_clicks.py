"""The first-clicks screen's choice and report (benchmarks.offline.first_clicks), on made-up rows."""

from __future__ import annotations

from typing import Any

from benchmarks.offline.cold_scale import LISTS
from benchmarks.offline.first_clicks import NS, SHIPPED, choose, markdown


def _row(model: str, seed: int, cold: list[float], main: list[float]) -> dict[str, Any]:
    def by_n(values: list[float]) -> dict[str, Any]:
        per_n = {str(n): {"new": v, "new_p10": v} for n, v in zip(NS, values, strict=True)}
        return {"val": per_n, "test": per_n}

    rows = {"main|1.0": by_n(main), SHIPPED: by_n(cold)}
    for name in LISTS:
        rows[name] = by_n([0.4] * len(NS))
    return {"model": model, "seed": seed, "seconds": 1.0, "best_epoch": 9, "cold_epoch": 4, "rows": rows}


def test_the_cold_checkpoint_keeps_a_user_up_to_the_first_n_where_it_stops_winning_on_validation() -> None:
    # n = 0, 1, 3, 5, 10: the cold weights win at 0, 1 and 3 pooled (one seed loses at 3 alone), lose
    # at 5, and would win again at 10: the rule stops at the first loss, so 4 ("fewer than 4 clicks")
    rows = [
        _row("control", 0, [0.45, 0.42, 0.41, 0.38, 0.40], [0.43, 0.40, 0.42, 0.40, 0.30]),
        _row("mail", 0, [0.45, 0.42, 0.43, 0.38, 0.40], [0.43, 0.40, 0.40, 0.40, 0.30]),
    ]
    clicks, val = choose(rows)
    assert clicks == 4
    assert abs(val[SHIPPED]["3"] - 0.42) < 1e-12 and abs(val["main|1.0"]["3"] - 0.41) < 1e-12
    assert choose([_row("control", 0, [0.40] * 5, [0.45] * 5)])[0] == 0  # never better: never
    report = markdown(
        {
            "commands": ["c"],
            "machine": {"cores": 2, "torch": "t"},
            "cold_clicks": clicks,
            "val_means": val,
            "rows": rows,
        }
    )
    assert "fewer than 4 clicks" in report and "| cold, a = 0.25 |" in report
