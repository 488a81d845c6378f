"""The plumbing the small screens share (`cold_scale`, `first_clicks`, `onboarding_answer`): one
row per (name, seed) in a JSON-lines file that a rerun resumes, computed on worker processes, and
the result's header (the commands that produced the rows, date, machine, time)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.offline.runner import machine

Row = dict[str, Any]


def resume(
    rows_path: Path,
    wanted: Sequence[tuple[str, int]],
    compute: Callable[[str, int, str | None], Row],
    data_dir: str | None,
    jobs: int,
    key: str = "model",
) -> tuple[list[Row], int]:
    """The rows in `rows_path`, plus `compute(name, seed, data_dir)` for each (name, seed) of
    `wanted` that no row has yet (its name under `key`), on `jobs` spawned processes, each row
    appended to the file as it lands. Returns every row and how many were computed now."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r[key], r["seed"]) for r in rows}
    todo = [(name, seed) for name, seed in wanted if (name, seed) not in done]
    if not todo:
        return rows, 0
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(compute, *zip(*todo, strict=True), [data_dir] * len(todo)):
            rows.append(row)
            with rows_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{row[key]} seed {row['seed']}: {row['seconds']:.0f} s", flush=True)
    return rows, len(todo)


def header(json_path: Path, command: str, computed: int, started: float) -> Row:
    """The result's header: the commands that computed its rows (this one added when it computed
    any), today's date, the machine, and this invocation's wall time since `started`."""
    before = json.loads(json_path.read_text()) if json_path.exists() else {}
    earlier = before.get("commands", [])
    return {
        "commands": [*earlier, command] if computed else earlier,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    }
