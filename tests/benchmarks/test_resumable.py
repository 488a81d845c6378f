"""The small screens' resumable rows (benchmarks.offline.resumable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.offline.resumable import header, resume


def _compute(name: str, seed: int, data_dir: str | None) -> dict[str, Any]:
    return {"model": name, "seed": seed, "seconds": 0.0, "data_dir": data_dir}


def test_a_rerun_computes_only_the_rows_missing_and_keeps_the_commands_that_made_them(tmp_path: Path) -> None:
    rows_path = tmp_path / "screen.jsonl"
    rows_path.write_text(json.dumps({"model": "control", "seed": 0, "seconds": 9.0}) + "\n")
    wanted = [("control", 0), ("mail", 0), ("control", 1)]
    rows, computed = resume(tmp_path / "screen", wanted, _compute, "DIR", jobs=1)
    assert computed == 2 and len(rows) == 3
    assert rows[0]["seconds"] == 9.0  # the row already there is kept, not recomputed
    assert {(r["model"], r["seed"], r.get("data_dir")) for r in rows[1:]} == {
        ("mail", 0, "DIR"),
        ("control", 1, "DIR"),
    }
    assert len(rows_path.read_text().splitlines()) == 3  # each computed row appended as it landed
    assert resume(tmp_path / "screen", wanted, _compute, "DIR", jobs=1) == (rows, 0)  # nothing left to do

    json_path = tmp_path / "screen.json"
    first = header(tmp_path / "screen", "python -m screen", 2, time.perf_counter())
    assert first["commands"] == ["python -m screen"] and first["machine"]["cores"]
    json_path.write_text(json.dumps(first))
    assert header(tmp_path / "screen", "python -m screen --again", 0, time.perf_counter())["commands"] == [
        "python -m screen"
    ]
    assert header(tmp_path / "screen", "python -m screen --more", 1, time.perf_counter())["commands"] == [
        "python -m screen",
        "python -m screen --more",
    ]
