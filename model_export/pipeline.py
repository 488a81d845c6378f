"""One training run from raw data to RUN_DIR, shared by the CLI and the benchmarks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_export import data as datasets
from model_export.catalog import EVAL_NEGATIVES, RECALL_K, TOP_K
from model_export.checkpoint import save_run
from model_export.evaluation import full_report, task_record
from model_export.features import EncodedData, encode_data
from model_export.model import RANKERS, MailModel, ModelConfig, RankerConfig, ZeroShotConfig
from model_export.protocol import TEST, Split, SplitConfig, add_declared_genres, make_split, split_record
from model_export.train import History, TrainConfig, TrainHooks, train

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """Everything that defines a run; written into the checkpoint and config.json."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    protocol: str = "mail"
    seed: int = 0
    behavior_len: int = 32
    d_embed: int = 32
    behavior: str = "all"  # "all" rated items | "clicks": only past clicks (what serving sees)
    onboarding_noise: float | None = None  # None: no declared-genres attribute
    # how the declared genres are built (`protocol.add_declared_genres`): from each user's first
    # `onboarding_first` interactions, ranked by "count" or "lift"
    onboarding_first: int = 5
    onboarding_by: str = "count"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Prepared:
    interactions: datasets.Interactions
    split: Split
    encoded: EncodedData
    seconds: float


def prepare(spec: RunSpec) -> Prepared:
    started = time.perf_counter()
    raw = datasets.load(spec.dataset, spec.data_dir, seed=spec.seed)
    if spec.onboarding_noise is not None:
        raw = add_declared_genres(
            raw, spec.onboarding_first, noise=spec.onboarding_noise, seed=spec.seed, by=spec.onboarding_by
        )
    split = make_split(raw, SplitConfig(protocol=spec.protocol, seed=spec.seed))
    rcfg = spec.model.ranker or RankerConfig()
    slots = rcfg.virtual_slots or RANKERS[rcfg.kind].default_slots
    encoded = encode_data(
        raw, split, spec.behavior_len, slots, spec.d_embed, clicks_only=spec.behavior == "clicks"
    )
    return Prepared(raw, split, encoded, time.perf_counter() - started)


def task_split_record(prepared: Prepared, tcfg: TrainConfig) -> dict[str, Any]:
    """split.json: the split (`protocol.split_record`), the task, and the catalog task's fixed
    test negatives: for each liked test sample, in the order of `test`, the raw ids of the
    EVAL_NEGATIVES never-interacted items it is compared with for AUC."""
    record = split_record(prepared.interactions, prepared.split)
    record["task"] = task_record(tcfg)
    enc = prepared.encoded
    ev = enc.sampled_eval[TEST]
    n_pos = int(ev.labels.sum())
    negatives = (
        ev.items[n_pos:].reshape(n_pos, EVAL_NEGATIVES) if n_pos else np.zeros((0, EVAL_NEGATIVES), int)
    )
    ids = enc.catalog.ids
    record["sampled_negatives"] = {
        "per_positive": EVAL_NEGATIVES,
        "about": "for each test sample with label 1, in order: items the user never interacted with",
        "items": [[ids[r - 1] for r in row] for row in negatives.tolist()],
    }
    cases = enc.ranking[TEST]
    ts = prepared.interactions.timestamp
    record["ranking"] = {
        "about": "whole catalog, one case per test user with liked held-out items, scored at the "
        "time of their first test sample; positives: liked test items (and a strict new user's "
        "never-trained interactions); exclude: items never ranked for the user (known before)",
        "k": TOP_K,
        "recall_k": RECALL_K,
        "cases": [
            {
                "user": enc.user_ids[enc.user[row]],
                "timestamp": None if ts is None else int(ts[enc.source[row]]),
                "positives": [ids[r - 1] for r in pos.tolist()],
                "exclude": [ids[r - 1] for r in exc.tolist()],
            }
            for row, pos, exc in zip(cases.rows.tolist(), cases.positives, cases.exclude, strict=True)
        ],
    }
    return record


def run(
    spec: RunSpec,
    out: Path | None,
    prepared: Prepared | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[MailModel, dict[str, Any]]:
    """Train one model; with `out`, write RUN_DIR. Returns the model and its metrics report.

    `hooks` (opt-in) trains a baseline around the same ranking tower; see `train.TrainHooks`.
    """
    model, report, _ = run_with_history(spec, out, prepared, hooks)
    return model, report


def run_with_history(
    spec: RunSpec,
    out: Path | None,
    prepared: Prepared | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[MailModel, dict[str, Any], History]:
    """`run`, with the training history beside the model and report (new users' own checkpoint)."""
    prepared = prepared or prepare(spec)
    cfg = spec.model
    if cfg.ranker is None:
        cfg.ranker = RankerConfig()
    if cfg.model == "mail" and cfg.zero_shot is None:
        cfg.zero_shot = ZeroShotConfig()
    model, history = train(prepared.encoded, cfg, spec.train, hooks)
    report = full_report(model, prepared.encoded, history, spec.train)
    report["prepare_seconds"] = round(prepared.seconds, 2)
    report["history_batches"] = history.batches
    info = {
        "dataset": spec.dataset,
        "protocol": spec.protocol,
        "seed": spec.seed,
        "behavior_len": spec.behavior_len,
        "behavior": spec.behavior,
        "onboarding_noise": spec.onboarding_noise,
        **(
            {"onboarding_first": spec.onboarding_first, "onboarding_by": spec.onboarding_by}
            if spec.onboarding_noise is not None
            else {}
        ),
        "label": prepared.interactions.notes.get("label"),
    }
    if out is not None:
        save_run(
            out,
            model,
            prepared.encoded,
            spec.train,
            report,
            task_split_record(prepared, spec.train),
            info,
            None
            if history.cold_state is None
            else (history.cold_epoch, history.cold_scale, history.cold_clicks, history.cold_state),
        )
    return model, report, history
