"""The offline grid runner: rows for every cell, in worker processes, and a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.offline.runner import Cell, Grid, load_rows, run_grid


def test_grid_runs_in_workers_and_resumes(tmp_path: Path) -> None:
    cells = [Cell("synthetic", "strict", "base", method, 0) for method in ("control", "mail")]
    grid = Grid(cells, train={"epochs": 1})
    results = tmp_path / "rows.jsonl"
    run_grid(grid, None, results, progress=False, jobs=2)
    rows = load_rows(results, cells)
    assert sorted(r["cell"]["method"] for r in rows) == ["control", "mail"]
    for row in rows:
        assert 0.0 < row["test"]["new"]["auc"] < 1.0 and row["seconds"] > 0
        assert len(row["losses"]) == 1
    assert (
        rows[[r["cell"]["method"] for r in rows].index("mail")]["diagnostics"]["virtual_r2_new"] is not None
    )
    before = results.read_text()
    run_grid(grid, None, results, progress=False, jobs=2)  # every cell done: nothing runs again
    assert results.read_text() == before
    assert all(json.loads(line)["cell"] in [r["cell"] for r in rows] for line in before.splitlines())
