"""One training run from raw data to RUN_DIR, shared by the CLI and the benchmarks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_export import data as datasets
from model_export.features import EncodedData, encode_data
from model_export.model import RANKERS, MailModel, ModelConfig, RankerConfig, ZeroShotConfig
from model_export.protocol import Split, SplitConfig, add_declared_genres, make_split, split_record
from model_export.train import TrainConfig, TrainHooks, full_report, save_run, train

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
        raw = add_declared_genres(raw, noise=spec.onboarding_noise, seed=spec.seed)
    split = make_split(raw, SplitConfig(protocol=spec.protocol, seed=spec.seed))
    rcfg = spec.model.ranker or RankerConfig()
    slots = rcfg.virtual_slots or RANKERS[rcfg.kind].default_slots
    encoded = encode_data(
        raw, split, spec.behavior_len, slots, spec.d_embed, clicks_only=spec.behavior == "clicks"
    )
    return Prepared(raw, split, encoded, time.perf_counter() - started)


def run(
    spec: RunSpec,
    out: Path | None,
    prepared: Prepared | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[MailModel, dict[str, Any]]:
    """Train one model; with `out`, write RUN_DIR. Returns the model and its metrics report.

    `hooks` (opt-in) trains a baseline around the same ranking tower; see `train.TrainHooks`.
    """
    prepared = prepared or prepare(spec)
    cfg = spec.model
    if cfg.ranker is None:
        cfg.ranker = RankerConfig()
    if cfg.model == "mail" and cfg.zero_shot is None:
        cfg.zero_shot = ZeroShotConfig()
    model, history = train(prepared.encoded, cfg, spec.train, hooks)
    report = full_report(model, prepared.encoded, history)
    report["prepare_seconds"] = round(prepared.seconds, 2)
    report["history_batches"] = history.batches
    info = {
        "dataset": spec.dataset,
        "protocol": spec.protocol,
        "seed": spec.seed,
        "behavior_len": spec.behavior_len,
        "behavior": spec.behavior,
        "onboarding_noise": spec.onboarding_noise,
        "label": prepared.interactions.notes.get("label"),
    }
    if out is not None:
        save_run(
            out,
            model,
            prepared.encoded,
            spec.train,
            report,
            split_record(prepared.interactions, prepared.split),
            info,
        )
    return model, report
