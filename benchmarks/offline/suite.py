"""Issue #6's benchmark: the grid of settings and methods, tuning on validation, few-shot evaluation.

A plan is a list of blocks; a block runs some methods on some settings over some seeds. Before
any block, every tuned method tries each value of its knob on the tuning setting (seed `seeds[0]`
of the first block), and keeps the value with the best validation AUC on new users; `control`
goes first, and the ranker dropout it chooses is the tower every other method uses. Test metrics
never choose anything.

Rows are the grid runner's rows (`runner.Cell` and metrics) plus the knob value, so
`report.summarize` reads them; one JSON line per run, keyed by cell and value, so a rerun resumes.
A trained catalog-task row records the early-stopping rule it kept its weights by (`select`), and
every trained row its budget (`budget`: epochs, patience); a row of another rule or budget than the
plan's is neither resumed from nor reported (it stays in the file).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.offline.methods import METHODS, Method, Value
from benchmarks.offline.runner import Cell, result_row
from model_export import popular
from model_export.batches import Batches
from model_export.evaluation import Cold, cold_model, rank_part
from model_export.fewshot import evaluate_revealed, reveal, revealed_behavior, revealed_cases
from model_export.model import RANKERS, ModelConfig, RankerConfig, ZeroShotConfig
from model_export.pipeline import Prepared, RunSpec, prepare, run_with_history
from model_export.protocol import TEST
from model_export.train import TrainConfig

log = logging.getLogger(__name__)

FEWSHOT_N = (1, 3, 5)
FEWSHOT_N_CATALOG = (1, 3, 5, 10)
FEWSHOT_METHODS = ("control", "oracle", "mail", "mail-own", "mail-blend", "popularity", "popularity-segment")
POPULAR = popular.METHODS  # no model: scored from the training counts
# the rule of a catalog-task row that records none: every such row was trained before rows recorded
# it (2026-12-03), under the default of the time
UNRECORDED_SELECT = "ndcg"
# the patience of a trained row that records no budget: TrainConfig's until rows recorded it
# (2026-12-03); its epochs were always the plan's own (every plan names them)
UNRECORDED_PATIENCE = 2
LOSS_CURVES = ("mail", "mail-mse")  # runs whose per-batch losses are kept (first seed, tuning setting)


@dataclass(frozen=True)
class Setting:
    dataset: str
    protocol: str
    ranker: str = "base"
    onboarding_noise: float | None = None

    def cell(self, method: str, seed: int) -> Cell:
        return Cell(self.dataset, self.protocol, self.ranker, method, seed, self.onboarding_noise)


@dataclass(frozen=True)
class Block:
    name: str
    about: str
    settings: tuple[Setting, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]

    def cells(self) -> list[Cell]:
        return [s.cell(m, seed) for s in self.settings for seed in self.seeds for m in self.methods]


@dataclass(frozen=True)
class Scale:
    """Sizes and the training budget, the same for every method."""

    d_embed: int = 32
    behavior_len: int = 32
    behavior: str = "clicks"  # what serving sees: earlier clicks (and behavior-only rows)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    zst: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides


@dataclass
class Plan:
    blocks: list[Block]
    scale: Scale
    tune: bool = True  # False: every method runs its default (values[0])

    @property
    def tuning_setting(self) -> Setting:
        return self.blocks[0].settings[0]

    @property
    def tuning_seed(self) -> int:
        return self.blocks[0].seeds[0]

    def cells(self) -> list[Cell]:
        return list(dict.fromkeys(c for b in self.blocks for c in b.cells()))


def row_key(cell: Cell, value: Value) -> str:
    return json.dumps({"cell": asdict(cell), "value": value}, sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One training run, everything resolved: what a worker process needs, and picklable."""

    cell: Cell
    value: Value
    ranker: RankerConfig  # the tower, with the dropout control chose
    scale: Scale
    data_dir: str | None
    fewshot: bool  # also evaluate with each new user's first n interactions revealed
    keep_batches: bool  # keep the per-batch losses (for the loss plot)

    def data_key(self) -> tuple[Any, ...]:
        c = self.cell
        return (c.dataset, c.protocol, c.seed, str(c.onboarding_noise), RANKERS[c.ranker].default_slots)


class Suite:
    """Runs a plan into a JSON-lines file, resuming from the rows already there.

    With `jobs` > 1, runs go to that many worker processes (one torch thread each); the rows are
    the same as with one process, since every run seeds itself.
    """

    def __init__(
        self, plan: Plan, data_dir: str | None, rows_path: Path, progress: bool = True, jobs: int = 1
    ) -> None:
        self.plan, self.data_dir, self.rows_path = plan, data_dir, rows_path
        self.progress, self.jobs = progress, jobs
        rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
        train = TrainConfig(**plan.scale.train)
        self.select = train.select if train.task == "catalog" else None  # None: the rule does not apply
        self.budget = {"epochs": train.epochs, "patience": train.patience}
        kept = [r for r in rows if self.of_rule(r)]
        self.other_rule = len(rows) - len(kept)  # rows of another early-stopping rule or budget, not used
        if self.other_rule:
            log.warning(
                "%d rows in %s were kept by another early-stopping rule or budget than %s, %s: not used",
                self.other_rule,
                rows_path,
                self.select,
                self.budget,
            )
        self.rows = {row_key(Cell(**r["cell"]), r["value"]): r for r in kept}
        self.chosen: dict[str, Value] = {}
        self.tuning: list[dict[str, Any]] = []
        self.ran = 0

    def execute(self, run: bool = True) -> list[dict[str, Any]]:
        """Tune, then run every cell; returns the rows of the chosen configurations, in plan order.
        Without `run`, nothing trains: the rows already in the results file are reported."""
        if not run:
            keys = [row_key(c, self.value(c.method)) for c in self.plan.cells()]
            return [self.rows[k] for k in keys if k in self.rows]
        self.rows_path.parent.mkdir(parents=True, exist_ok=True)
        cells = self.plan.cells()
        tuned = self._tuned()
        s, seed = self.plan.tuning_setting, self.plan.tuning_seed
        total = sum(len(m.values) for m in tuned) + len(cells)
        pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn")) if self.jobs > 1 else None
        with tqdm(total=total, desc="offline benchmark", disable=not self.progress) as self._bar:
            try:
                # control first: the ranker dropout it chooses is every other method's tower
                for group in (
                    [m for m in tuned if m.name == "control"],
                    [m for m in tuned if m.name != "control"],
                ):
                    self._run_all([(s.cell(m.name, seed), v) for m in group for v in m.values], pool)
                    for m in group:
                        self._choose(m)
                self._run_all([(c, self.value(c.method)) for c in cells], pool)
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        return [self.rows[row_key(c, self.value(c.method))] for c in cells]

    def of_rule(self, row: dict[str, Any]) -> bool:
        """Whether a row was trained with the plan's budget and kept by its early-stopping rule (a
        list, with no training, always)."""
        if row["cell"]["method"] in POPULAR:
            return True
        budget = {"epochs": self.budget["epochs"], "patience": UNRECORDED_PATIENCE, **row.get("budget", {})}
        if budget != self.budget:
            return False
        return self.select is None or row.get("select", UNRECORDED_SELECT) == self.select

    def value(self, method: str) -> Value:
        m = METHODS[method]
        return self.chosen.get(m.tuned_as or m.name, m.values[0])

    def _tuned(self) -> list[Method]:
        if not self.plan.tune:
            return []
        wanted = {c.method for c in self.plan.cells()}
        return [m for m in METHODS.values() if m.knob is not None and m.name in wanted]

    def _choose(self, m: Method) -> None:
        cell = self.plan.tuning_setting.cell(m.name, self.plan.tuning_seed)
        tried = []
        for v in m.values:
            val = self.rows[row_key(cell, v)]["val"]
            tried.append({"value": v, "val_new_auc": val["new"]["auc"], "val_auc": val["all"]["auc"]})
        best = max(tried, key=lambda t: t["val_new_auc"])
        self.chosen[m.name] = best["value"]
        self.tuning.append({"method": m.name, "knob": m.knob, "tried": tried, "chosen": best["value"]})

    def _job(self, cell: Cell, value: Value) -> Job:
        ranker = replace(self.plan.scale.ranker, kind=cell.ranker)
        if "control" in self.chosen:
            ranker = replace(ranker, dropout=float(self.chosen["control"] or 0))
        first = (
            Setting(cell.dataset, cell.protocol, cell.ranker, cell.onboarding_noise)
            == self.plan.tuning_setting
        )
        return Job(
            cell,
            value,
            ranker,
            self.plan.scale,
            self.data_dir,
            fewshot=first and cell.method in FEWSHOT_METHODS,
            keep_batches=first and cell.method in LOSS_CURVES and cell.seed == self.plan.tuning_seed,
        )

    def _run_all(self, pairs: list[tuple[Cell, Value]], pool: ProcessPoolExecutor | None) -> None:
        """Run the pairs not yet in the results file, in data order; write each row as it comes."""
        keys = list(dict.fromkeys(row_key(c, v) for c, v in pairs))
        done = [k for k in keys if k in self.rows]
        self._bar.update(len(pairs) - len(keys) + len(done))
        jobs = sorted((self._job(c, v) for c, v in pairs if row_key(c, v) not in self.rows), key=Job.data_key)
        jobs = list({row_key(j.cell, j.value): j for j in jobs}.values())
        results = (
            map(run_job, jobs)
            if pool is None
            else (f.result() for f in as_completed(pool.submit(run_job, j) for j in jobs))
        )
        for row in results:
            self.rows[row_key(Cell(**row["cell"]), row["value"])] = row
            with self.rows_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            self.ran += 1
            c = row["cell"]
            self._bar.set_postfix_str(
                f"{c['dataset']} {c['protocol']} {c['ranker']} {c['method']} seed {c['seed']}"
            )
            self._bar.update(1)


_CACHE: dict[str, Any] = {}  # per process: the last prepared dataset and its few-shot reveals


def run_job(job: Job) -> dict[str, Any]:
    """Train and evaluate one cell; a row of the results file."""
    cell, scale = job.cell, job.scale
    if cell.method in POPULAR:
        return _popularity_row(job)
    built = METHODS[cell.method].build(job.ranker, scale.zst, job.value, cell.seed)
    spec = _spec(job, built.model, built.train)
    prepared = _prepared(job, spec)
    started = time.perf_counter()
    model, report, history = run_with_history(spec, None, prepared, built.hooks)
    row = result_row(cell, time.perf_counter() - started, report, value=job.value)
    row["budget"] = {"epochs": spec.train.epochs, "patience": spec.train.patience}
    if spec.train.task == "catalog":
        row["select"] = spec.train.select  # what early stopping kept the weights by
    if job.fewshot and prepared.interactions.timestamp is not None:  # "first n" needs time
        if spec.train.task == "catalog":
            cold = cold_model(model, history)
            row["fewshot"] = fewshot_catalog(model, prepared, scale.behavior == "clicks", cold=cold)
        else:
            row["fewshot"] = _fewshot(model, prepared, scale.behavior == "clicks")
    if job.keep_batches:
        row["batches"] = report["history_batches"]
    return row


def _spec(job: Job, model: ModelConfig | None = None, train: dict[str, Any] | None = None) -> RunSpec:
    """The cell's run: its data and split at the plan's scale, `model` trained with the scale's
    budget and the method's `train` overrides (no model: the data and task alone)."""
    cell, scale = job.cell, job.scale
    return RunSpec(
        dataset=cell.dataset,
        data_dir=job.data_dir,
        protocol=cell.protocol,
        seed=cell.seed,
        behavior_len=scale.behavior_len,
        d_embed=scale.d_embed,
        behavior=scale.behavior,
        onboarding_noise=cell.onboarding_noise,
        model=model or ModelConfig(),
        train=TrainConfig(**{**scale.train, **(train or {}), "seed": cell.seed, "progress": False}),
    )


def _prepared(job: Job, spec: RunSpec) -> Prepared:
    if _CACHE.get("key") != job.data_key():
        _CACHE.clear()  # one prepared dataset at a time keeps memory flat
        _CACHE.update(key=job.data_key(), prepared=prepare(spec))
    prepared: Prepared = _CACHE["prepared"]
    return prepared


def _popularity_row(job: Job) -> dict[str, Any]:
    """A most-liked-items list on the cell's split (overall, or by the segment chosen on
    validation): no training, the same metrics."""
    cell, scale = job.cell, job.scale
    # prepared for the cell's tower (its virtual slots), which the setting's trained cells share
    spec = _spec(job, ModelConfig(ranker=job.ranker))
    tcfg = spec.train
    prepared = _prepared(job, spec)
    started = time.perf_counter()
    enc = prepared.encoded
    chosen, tried = popular.by_method(enc, cell.method)
    report = popular.report(enc, tcfg, chosen, tried)
    row = result_row(cell, time.perf_counter() - started, report, value=job.value)
    if "segment" in report:
        row["segment"] = report["segment"]
    if job.fewshot and tcfg.task == "catalog" and prepared.interactions.timestamp is not None:
        row["fewshot"] = fewshot_catalog(chosen, prepared, scale.behavior == "clicks")
    return row


def _reveals(prepared: Prepared, clicks_only: bool, ns: tuple[int, ...]) -> dict[int, Any]:
    """Each new user's first n interactions for every n in `ns`, on `prepared`'s split: computed
    once per prepared dataset (kept beside the dataset it belongs to, so a caller that prepares
    another split, as `task_choice` does per seed, never reads the previous one's)."""
    key = f"revealed-{clicks_only}-{ns}"
    cached = _CACHE.get(key)
    if cached is None or cached[0] is not prepared:
        revealed = {n: reveal(prepared.interactions, prepared.split, n, clicks_only) for n in ns}
        cached = _CACHE[key] = (prepared, revealed)
    return cached[1]


def fewshot_catalog(
    model: Any, prepared: Prepared, clicks_only: bool, part: int = TEST, cold: Cold | None = None
) -> dict[str, Any]:
    """New users' whole-catalog ranking with their first n interactions known (the model fed
    them as behavior; a popular list, `model` a `PopularList`, only drops them), on `part`'s
    users (VAL: what a choice may read). `cold`, new users' own checkpoint, scores those with
    fewer items known than its `clicks`, as the service does; the weights kept for everyone the
    others."""
    enc = prepared.encoded
    out = {}
    for n, revealed in _reveals(prepared, clicks_only, FEWSHOT_N_CATALOG).items():
        cases = revealed_cases(enc.ranking[part], enc, prepared.interactions, revealed)
        if isinstance(model, popular.PopularList):
            ranking = popular.rank(enc, model, cases)
        else:
            batches = Batches(enc, fill_new_users=False)
            batches.behavior = torch.from_numpy(revealed_behavior(prepared.interactions, enc, revealed))
            ranking = rank_part(model, batches, part, cases, cold)
        out[str(n)] = {
            "ranking": ranking,
            "revealed_mean": float(np.mean([len(v) for v in revealed.values()])),
        }
    return out


def _fewshot(model: Any, prepared: Prepared, clicks_only: bool) -> dict[str, Any]:
    """Test metrics with each new user's first n behavior interactions revealed."""
    test = prepared.encoded.rows(TEST)
    out = {}
    for n, revealed in _reveals(prepared, clicks_only, FEWSHOT_N).items():
        behavior = revealed_behavior(prepared.interactions, prepared.encoded, revealed)
        out[str(n)] = {
            "test": evaluate_revealed(model, prepared.encoded, behavior, test),
            "revealed_mean": float(np.mean([len(v) for v in revealed.values()])),
        }
    return out


def fewshot_rows_catalog(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the catalog few-shot points, protocol "<protocol>, n=<n>": new users' ranking only."""
    out = []
    for r in rows:
        if r["cell"]["method"] == "oracle":
            continue  # fed the revealed items only, it is no ceiling here
        for n, fs in (r.get("fewshot") or {}).items():
            cell = {**r["cell"], "protocol": f"{r['cell']['protocol']}, n={n}"}
            out.append(
                {**r, "cell": cell, "test": {}, "ranking": {"test": fs["ranking"]}, "diagnostics": None,
                 "revealed_mean": fs["revealed_mean"]}
            )  # fmt: skip
    return out


def fewshot_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the few-shot settings, protocol "<protocol>, n=<n>", for `report.summarize`.

    The oracle's row is the same at every n (all real behavior): the ceiling.
    """
    out = []
    for r in rows:
        for n, fs in (r.get("fewshot") or {}).items():
            cell = {**r["cell"], "protocol": f"{r['cell']['protocol']}, n={n}"}
            test = r["test"] if r["cell"]["method"] == "oracle" else fs["test"]
            out.append(
                {**r, "cell": cell, "test": test, "diagnostics": None, "revealed_mean": fs["revealed_mean"]}
            )
    return out
