"""The serving benchmark's own pieces that run without a load: CPU accounting and the report."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks.serving import scenarios
from benchmarks.serving.loadgen import lua_long_string
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


def test_report_shows_the_share_of_cold_requests_the_memo_answered() -> None:
    result = json.loads(RESULTS.read_text())
    run = result["scenarios"][0][f"c{result['setup']['connections']}"]
    run["service_metrics"] = {"cold_hit": 90, "cold_miss": 10, "cold_fill": 2, "recommend_200": 100}
    assert "| 90% |" in markdown(result)
    run["service_metrics"] = {"recommend_200": 100}  # memo off, or a results file from before it
    assert "| off |" in markdown(result)


def test_people_scenarios_send_real_users_attributes(
    tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    people = scenarios.ml100k_people(tmp_path)
    assert people == [
        {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"},
        {"age": 53, "gender": "F", "occupation": "other", "zip": "94043"},
    ]
    bundle = tiny_bundle("mail", "base")
    assert not {s.name for s in scenarios.build(bundle)} & {"cold_people_100", "cold_people_catalog"}
    built = {s.name: s for s in scenarios.build(bundle, people=people)}
    for name, candidates in (("cold_people_100", True), ("cold_people_catalog", False)):
        lua = built[name].load.lua
        assert lua is not None and built[name].load.body is None
        assert '{"age":24,"gender":"M","occupation":"technician","zip":"85711"}' in lua
        assert ('"candidates"' in lua) is candidates
        assert '"user_id":"people-' in lua  # a new id each request: never a training user
    assert "local clicks = {}\n" in (built["cold_people_catalog"].load.lua or "")  # no history sent
    # the clicked one: two different items, drawn from the most popular, as its history
    catalog = json.loads((bundle / "catalog.json").read_text())
    by_count = sorted(zip(catalog["popularity"], catalog["ids"], strict=True), key=lambda c: -c[0])
    pool = [i for _, i in by_count[: scenarios.CLICK_POOL]]
    lua = built["cold_people_clicked_catalog"].load.lua
    assert lua is not None and '"history":[' in lua and '"candidates"' not in lua
    assert "local clicks = {" + ",".join(lua_long_string(json.dumps(i)) for i in pool) + "}" in lua
    # the floor's sample answer has the scenario's shape, for its reruns too
    rerun = replace(built["cold_people_catalog"], name="cold_people_catalog+no-memo")
    assert '"candidates"' not in scenarios.sample_body(rerun, bundle)
    assert '"candidates"' in scenarios.sample_body(built["cold_people_100"], bundle)
    rerun = replace(built["cold_people_clicked_catalog"], name="cold_people_clicked_catalog+search")
    clicked = json.loads(scenarios.sample_body(rerun, bundle))
    assert clicked["history"] == pool[:2] and "candidates" not in clicked
