"""Run a grid of training runs (dataset x protocol x ranker x method x seed), resumably.

Each finished cell is one JSON line in a results file; a rerun skips cells already there, so a
long benchmark survives interruption. Data preparation is shared between the methods of a seed.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model_export.model import RANKERS, ModelConfig, RankerConfig, ZeroShotConfig
from model_export.pipeline import Prepared, RunSpec, prepare, run
from model_export.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    dataset: str
    protocol: str
    ranker: str
    method: str
    seed: int
    onboarding_noise: float | None = None

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _mail(**zst: Any) -> Callable[[RankerConfig], ModelConfig]:
    def make(ranker: RankerConfig) -> ModelConfig:
        return ModelConfig(model="mail", ranker=ranker, zero_shot=ZeroShotConfig(**zst))

    return make


def _plain(model: str) -> Callable[[RankerConfig], ModelConfig]:
    def make(ranker: RankerConfig) -> ModelConfig:
        return ModelConfig(model=model, ranker=ranker)

    return make


# method name -> model configuration for a given ranking tower
METHODS: dict[str, Callable[[RankerConfig], ModelConfig]] = {
    "control": _plain("control"),
    "oracle": _plain("oracle"),
    "mail": _mail(),
    "mail-mse": _mail(align="mse"),
}


@dataclass
class Grid:
    cells: list[Cell]
    behavior: str = "clicks"
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (quick runs)


def _spec(cell: Cell, data_dir: str | None, grid: Grid) -> RunSpec:
    ranker = RankerConfig(kind=cell.ranker)
    return RunSpec(
        dataset=cell.dataset,
        data_dir=data_dir,
        protocol=cell.protocol,
        seed=cell.seed,
        behavior=grid.behavior,
        onboarding_noise=cell.onboarding_noise,
        model=METHODS[cell.method](ranker),
        train=TrainConfig(seed=cell.seed, progress=False, **grid.train),
    )


def done_keys(results: Path) -> set[str]:
    if not results.exists():
        return set()
    return {json.dumps(json.loads(line)["cell"], sort_keys=True) for line in results.read_text().splitlines()}


_PREPARED: dict[tuple[Any, ...], Prepared] = {}  # per process: the one dataset prepared last


def run_cell(cell: Cell, data_dir: str | None, grid: Grid) -> dict[str, Any]:
    """Train and evaluate one cell; returns its results row."""
    spec = _spec(cell, data_dir, grid)
    assert spec.model.ranker is not None
    slots = RANKERS[cell.ranker].default_slots
    data_key = (cell.dataset, cell.protocol, cell.seed, cell.onboarding_noise, slots, grid.behavior)
    if data_key not in _PREPARED:
        _PREPARED.clear()  # one prepared dataset at a time keeps memory flat
        _PREPARED[data_key] = prepare(spec)
    t0 = time.perf_counter()
    _, report = run(spec, None, _PREPARED[data_key])
    return result_row(cell, time.perf_counter() - t0, report)


def result_row(cell: Cell, seconds: float, report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One line of a results file: the cell, `extra` (e.g. the tuned value), timings and metrics."""
    return {
        "cell": asdict(cell),
        **extra,
        "seconds": round(seconds, 2),
        "train_seconds": report["train_seconds"],
        "best_epoch": report["best_epoch"],
        **({"cold_epoch": report["cold_epoch"]} if "cold_epoch" in report else {}),
        **({"cold_scale": report["cold_scale"]} if "cold_scale" in report else {}),
        **({"cold_clicks": report["cold_clicks"]} if "cold_clicks" in report else {}),
        "test": report["test"],
        "val": report["val"],
        "ranking": report.get("ranking"),
        "diagnostics": report.get("diagnostics"),
        "prior": report.get("prior"),
        # with new users' own checkpoint: the same run with one checkpoint for every user
        **({"one_checkpoint": report["one_checkpoint"]} if "one_checkpoint" in report else {}),
        "losses": report["epochs"],
    }


def run_grid(grid: Grid, data_dir: str | None, results: Path, progress: bool = True, jobs: int = 1) -> float:
    """Run every cell not yet in `results`; returns the wall time spent.

    With `jobs` > 1 the cells go to that many worker processes, one torch thread each (on small
    models two single-threaded runs finish sooner than two runs one after the other on two threads).
    """
    results.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(results)
    todo = [c for c in grid.cells if c.key() not in done]
    started = time.perf_counter()
    if jobs > 1:
        grid = replace(grid, train={**grid.train, "threads": 1})
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else nullcontext() as pool:
        rows: Iterable[dict[str, Any]] = (
            (f.result() for f in as_completed([pool.submit(run_cell, c, data_dir, grid) for c in todo]))
            if pool is not None
            else (run_cell(c, data_dir, grid) for c in todo)
        )
        for row in tqdm(rows, total=len(todo), desc="offline benchmark", disable=not progress):
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    return time.perf_counter() - started


def load_rows(results: Path, cells: Iterable[Cell] | None = None) -> list[dict[str, Any]]:
    wanted = {c.key() for c in cells} if cells is not None else None
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return [r for r in rows if wanted is None or json.dumps(r["cell"], sort_keys=True) in wanted]


def machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
