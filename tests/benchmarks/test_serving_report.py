"""The serving benchmark's own pieces that run without a load: CPU accounting and the report."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

from benchmarks.serving.procs import cpu_seconds
from benchmarks.serving.report import markdown
from benchmarks.serving.run import knee

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serving.json"


def test_cpu_seconds_counts_this_process_work() -> None:
    before = cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    spent = cpu_seconds(os.getpid()) - before
    assert 0.2 <= spent <= 1.0, spent


def test_report_shows_cpu_per_request_and_reads_results_without_it() -> None:
    result = json.loads(RESULTS.read_text())
    row = copy.deepcopy(result)
    run = row["scenarios"][0][f"c{row['setup']['connections']}"]
    run |= {"service_cpu_us_per_request": 400.0, "floor_cpu_us_per_request": 150.0, "cpu_ratio": 0.375}
    text = markdown(row)
    assert "| 400 / 150 | 0.38 |" in text and "CPU ratio" in text
    for scenario in result["scenarios"]:  # a results file from before the CPU columns
        for key in list(scenario):
            if key.startswith("c") and isinstance(scenario[key], dict):
                for field in ("service_cpu_us_per_request", "floor_cpu_us_per_request", "cpu_ratio"):
                    scenario[key].pop(field, None)
    assert "| n/a / n/a | nan |" in markdown(result)


def _open_run(fraction: float, p99: float, completed: int = 100) -> dict[str, object]:
    return {
        "fraction": fraction,
        "offered_rps": 1000 * fraction,
        "achieved_rps": 1000 * fraction,
        "scheduled": 100,
        "completed": completed,
        "errors": 100 - completed,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "p999_ms": p99,
        "max_ms": p99,
        "service_cpu_share": fraction,
        "send_lag_p99_ms": 0.1,
        "connections": 4,
    }


def test_knee_is_where_p99_doubles_or_answers_fall_short() -> None:
    flat = [_open_run(f, 5.0) for f in (0.25, 0.5, 0.75)]
    assert knee(flat) is None
    assert knee([*flat, _open_run(0.9, 24.0)]) is None  # below 5x the lowest-load p99
    assert knee([*flat, _open_run(0.9, 25.5)]) == {"at_fraction": 0.9, "below_fraction": 0.75}
    assert knee([_open_run(0.25, 5.0), _open_run(0.5, 6.0, completed=90)]) == {
        "at_fraction": 0.5,
        "below_fraction": 0.25,
    }


def test_report_shows_the_open_loop_table_and_its_knee() -> None:
    result = json.loads(RESULTS.read_text())
    runs = [_open_run(0.25, 5.0), _open_run(0.5, 5.5), _open_run(0.75, 30.0)]
    result["scenarios"][0]["open_loop"] = {"max_rps": 1000.0, "runs": runs, "knee": knee(runs)}
    text = markdown(result)
    assert "Latency against offered load" in text
    assert "| 75% | 750 | 750 | 1.00 | 30.00 |" in text
    assert "between 50% and 75% of the closed-loop maximum" in text
