"""benchmarks/ranker_width.py: the ranker call timed per width, against the first, in one process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.ranker_width import markdown, no_history_speed, reading_speed, speed


def report(command: str, widths: list[str], cases: list[dict[str, Any]], **extra: Any) -> str:
    """`markdown` of a result as `main` writes it, around these timed cases."""
    return markdown(
        {"command": command, "date": "2026-12-02", "machine": {"cores": 2}, "widths": widths, "rounds": 2,
         "loadavg_at_start": [0.1], "loadavg_at_end": [0.2], "cases": cases, **extra}
    )  # fmt: skip


def test_speed_times_every_width_against_the_first(tiny_bundle: Callable[..., Path]) -> None:
    control, mail = tiny_bundle("control", "base"), tiny_bundle("mail", "base")
    cases = speed({"a": mail, "b": control}, rounds=2)
    assert [c["candidates"] for c in cases][0] == 100 and cases[1]["candidates"] > 100
    for case in cases:
        assert set(case["us"]) == set(case["cpu_us"]) == {"a", "b"}
        assert case["ratio_to_first"]["a"] == case["cpu_ratio_to_first"]["a"] == 1.0
        assert all(len(r) == 2 and min(r) > 0 for r in case["rounds_cpu_us"].values())
        assert case["cpu_ratio_to_first"]["b"] == case["cpu_us"]["b"] / case["cpu_us"]["a"]
    text = report("python -m benchmarks.ranker_width", ["a", "b"], cases)
    assert "| candidates | hidden a | hidden b |" in text
    assert f"{cases[0]['cpu_us']['b']:.1f} us (x{cases[0]['cpu_ratio_to_first']['b']:.2f})" in text


def test_no_history_times_both_graphs_for_a_user_without_behavior(tiny_bundle: Callable[..., Path]) -> None:
    cases = no_history_speed(tiny_bundle("mail", "base"), rounds=2)
    graphs = ["ranker.onnx", "ranker_no_history.onnx"]
    for case in cases:
        assert list(case["cpu_us"]) == graphs and case["cpu_ratio_to_first"]["ranker.onnx"] == 1.0
        assert all(len(r) == 2 and min(r) > 0 for r in case["rounds_cpu_us"].values())
    text = report("python -m benchmarks.ranker_width --no-history", ["256,128"], cases, graphs=graphs)
    assert "| candidates | `ranker.onnx` | `ranker_no_history.onnx` |" in text and "(256,128)" in text
    with pytest.raises(SystemExit, match="no ranker_no_history.onnx"):
        no_history_speed(tiny_bundle("mail", "din"), rounds=1)


def test_readings_time_a_known_and_a_new_user_per_bundle(tiny_bundle: Callable[..., Path]) -> None:
    cases = reading_speed(
        {"shared": tiny_bundle("mail", "base"), "own": tiny_bundle("control", "base")}, rounds=2
    )
    assert [c["user"] for c in cases] == ["known", "known", "new", "new"]
    assert [c["candidates"] for c in cases][::2] == [100, 100]
    for case in cases:
        assert list(case["cpu_us"]) == ["shared", "own"] and case["cpu_ratio_to_first"]["shared"] == 1.0
    text = report(
        "python -m benchmarks.ranker_width --readings", ["256,128"], cases, readings=["shared", "own"]
    )
    assert "| user | candidates | `shared` | `own` |" in text and "\n| new | 100 | " in text
