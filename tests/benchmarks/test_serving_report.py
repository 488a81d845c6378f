"""The serving benchmark's own pieces that run without a load: CPU accounting and the report."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

from benchmarks.serving.procs import cpu_seconds
from benchmarks.serving.report import markdown

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
