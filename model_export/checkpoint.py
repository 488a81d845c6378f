"""A run's files: the checkpoint (rebuildable from itself alone) and the JSON records beside it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model_export.evaluation import Cold, with_weights
from model_export.features import EncodedData
from model_export.model import MailModel, ModelConfig
from model_export.protocol import TEST
from model_export.train import TrainConfig
from service.contract import Schema

CHECKPOINT = "model.pt"
METRICS = "metrics.json"


def save_run(
    out: Path,
    model: MailModel,
    data: EncodedData,
    tcfg: TrainConfig,
    report: dict[str, Any],
    split_record: dict[str, Any],
    run_info: dict[str, Any],
    cold: tuple[int, float, int, dict[str, torch.Tensor]] | None = None,
) -> None:
    """RUN_DIR: model.pt (rebuildable from itself alone), split.json, metrics.json, config.json.
    `cold`: (epoch, scale of the learned logit, clicks below which it scores an unknown-id user,
    weights) of new users' own checkpoint (`TrainConfig.cold_checkpoint`, `cold_scale`,
    `cold_clicks`), kept in model.pt beside the weights every other user is scored with."""
    out.mkdir(parents=True, exist_ok=True)
    parity_rows = _parity_rows(data)
    torch.save(
        {
            "config": model.cfg.to_dict(),
            "train_config": asdict(tcfg),
            "schema": data.schema.to_dict(),
            "catalog": {
                "ids": data.catalog.ids,
                "titles": data.catalog.titles,
                "features": data.catalog.features,
                "popularity": data.item_counts[1:],
            },
            "state_dict": model.state_dict(),
            "run": run_info,
            "parity": {
                "user_attrs": data.user_attrs[data.user[parity_rows]],
                "context": data.context[parity_rows],
                "behavior": data.model_behavior(model.cfg.model == "oracle")[parity_rows],
                "item": data.item[parity_rows],
            },
            "metrics": report["test"],
            **(
                dict(zip(("cold_epoch", "cold_scale", "cold_clicks", "cold_state_dict"), cold, strict=True))
                if cold is not None
                else {}
            ),
        },
        out / CHECKPOINT,
    )
    (out / "split.json").write_text(json.dumps(split_record))
    (out / METRICS).write_text(json.dumps(_finite(report), indent=2))
    (out / "config.json").write_text(
        json.dumps({"model": model.cfg.to_dict(), "train": asdict(tcfg), "run": run_info}, indent=2)
    )


def _parity_rows(data: EncodedData, n: int = 64) -> npt.NDArray[np.int64]:
    """Real test rows for export's parity check: cold and warm users both."""
    test = data.rows(TEST)
    cold = test[(data.behavior[test] > 0).sum(1) == 0]
    cold = np.r_[cold, test[data.is_new[test]]]
    warm = test[~data.is_new[test]]
    return np.unique(np.r_[cold[: n // 2], warm[: n // 2]]).astype(np.int64)


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write undefined metrics as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def load_checkpoint(run_dir: Path) -> tuple[MailModel, dict[str, Any]]:
    """Rebuild the model from its checkpoint alone (config, schema, catalog, weights)."""
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    schema = Schema.from_dict(ckpt["schema"])
    model = MailModel(
        ModelConfig.from_dict(ckpt["config"]), schema, torch.as_tensor(ckpt["catalog"]["features"])
    )
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def cold_checkpoint(model: MailModel, ckpt: dict[str, Any]) -> Cold | None:
    """New users' own weights (`save_run`'s `cold`) in a copy of `model`, with the clicks below
    which they score an unknown-id user (1 in runs from before the setting), or None if the run
    kept none."""
    state = ckpt.get("cold_state_dict")
    return None if state is None else Cold(with_weights(model, state), int(ckpt.get("cold_clicks", 1)))
