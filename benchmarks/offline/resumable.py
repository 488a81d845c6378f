"""The plumbing the small screens share (`cold_scale`, `first_clicks`, `onboarding_answer`): their
common flags, one row per (name, seed) in a JSON-lines file that a rerun resumes, computed on
worker processes, the result's header (the commands that produced the rows, date, machine, time),
and the .json and .md they write. A screen's files share one prefix, `out`: OUT.jsonl, OUT.json,
OUT.md."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.offline.runner import machine

Row = dict[str, Any]


def parser(doc: str | None, out: Path | None) -> argparse.ArgumentParser:
    """A screen's command line: --data-dir, --seeds, --jobs and --out (`out`: its default prefix)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=out, help=f"prefix of the results files (default: {out})")
    return p


def path(out: Path, suffix: str) -> Path:
    """One of a screen's files: `out` with `suffix` (".jsonl", ".json", ".md") added."""
    return out.with_name(out.name + suffix)


def resume(
    out: Path,
    wanted: Sequence[tuple[str, int]],
    compute: Callable[[str, int, str | None], Row],
    data_dir: str | None,
    jobs: int,
    key: str = "model",
) -> tuple[list[Row], int]:
    """The rows in OUT.jsonl, plus `compute(name, seed, data_dir)` for each (name, seed) of
    `wanted` that no row has yet (its name under `key`), on `jobs` spawned processes, each row
    appended to the file as it lands. Returns every row and how many were computed now."""
    rows_path = path(out, ".jsonl")
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


def earlier(out: Path) -> Row:
    """The result OUT.json holds from an earlier invocation ({} if none)."""
    json_path = path(out, ".json")
    return dict(json.loads(json_path.read_text())) if json_path.exists() else {}


def header(out: Path, command: str, computed: int, started: float) -> Row:
    """The result's header: the commands that computed its rows (this one added when it computed
    any), today's date, the machine, and this invocation's wall time since `started`."""
    before = earlier(out)
    commands = before.get("commands", [])
    return {
        "commands": [*commands, command] if computed else commands,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    }


def preamble(title: str, result: Row, doc: str | None) -> list[str]:
    """A report's first lines: its title, the commands that computed its rows, the machine, and
    the screen's method (the third paragraph of its module docstring, `doc`) on one line."""
    method = " ".join((doc or "").split("\n\n")[2].split())
    return [
        f"# {title}",
        "",
        *(f"`{c}`" for c in result["commands"]),
        "",
        f"Machine: {result['machine']['cores']} cores, torch {result['machine']['torch']}. {method}",
    ]


def write(out: Path, result: Row, text: str) -> None:
    """OUT.json (the result) and OUT.md (its report, `text`)."""
    path(out, ".json").write_text(json.dumps(result, indent=1))
    path(out, ".md").write_text(text)
