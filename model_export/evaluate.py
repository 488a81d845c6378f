"""Recompute a bundle's test metrics through onnxruntime alone.

Reads the raw dataset and the split recorded in the bundle (`split.json`), encodes every test
sample with `service.contract.encode()` exactly as a live request would be (history = the user's
earlier interactions, deleted for new users), scores it with the service's `Towers`, and compares
with the metrics the training run wrote. No torch, no training-side feature code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from model_export import data as datasets
from model_export import metrics
from model_export.protocol import chronological_order
from service.contract import SPLIT_FILE, Bundle, blend_gate, encode, load_bundle
from service.inference import SessionOptions, Towers


def _histories(
    raw: datasets.Interactions, clicks_only: bool, seed: int
) -> dict[str, tuple[list[str], list[int]]]:
    """Per user: items and timestamps of the interactions behavior may use, oldest first."""
    order = chronological_order(raw, seed)
    if raw.timestamp is None:
        keep = ~raw.is_sample[order]
    elif clicks_only:
        keep = ~raw.is_sample[order] | (raw.label[order] == 1)
    else:
        keep = np.ones(len(order), bool)
    order = order[keep]
    out: dict[str, tuple[list[str], list[int]]] = {}
    ts = raw.timestamp
    for i in order.tolist():
        items, times = out.setdefault(str(raw.user[i]), ([], []))
        items.append(str(raw.item[i]))
        times.append(int(ts[i]) if ts is not None else 0)
    return out


def evaluate_bundle(bundle_dir: Path, data_dir: str | None, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    bundle: Bundle = load_bundle(bundle_dir)
    split = json.loads((bundle.path / SPLIT_FILE).read_text())
    man = bundle.manifest
    raw = datasets.load(man["dataset"], data_dir, seed=int(man["split_seed"]))
    towers = Towers(bundle, SessionOptions(device="cpu", intra_op_threads=2))
    behavior = man["behavior"]
    histories = _histories(raw, behavior["source"] == "clicks", int(split["seed"]))
    derived = split.get("derived_user_attributes", {})
    new_users = set(split["new_users"])
    oracle = man["model"] == "oracle"
    test = split["test"]
    stamps = test["timestamp"] or [None] * len(test["user"])
    scores = np.zeros(len(test["user"]), np.float64)
    rows = zip(test["user"], test["item"], stamps, strict=True)
    for i, (user, item, ts) in enumerate(
        tqdm(rows, total=len(scores), desc="evaluate", disable=not progress)
    ):
        attributes = {
            **raw.users.get(user, {}),
            **{k: v[user] for k, v in derived.items() if user in v},
        }
        items, times = histories.get(user, ([], []))
        if user in new_users and not oracle:
            history: list[str] = []
        elif ts is None:
            history = items
        else:
            history = items[: int(np.searchsorted(times, ts, side="left"))]
        context = {"timestamp": ts} if ts is not None else {}
        enc = encode(bundle.schema, bundle.catalog, user, attributes, history, context)
        gate = blend_gate(enc.n_history, towers.fill_mode, towers.blend_tau)
        virtual = towers.virtual_behavior(enc.user_attrs) if gate > 0 else None
        scores[i] = towers.score(enc, virtual, gate, bundle.catalog.rows([item]))[0]
    is_new = np.array([u in new_users for u in test["user"]])
    result = metrics.by_group(np.array(test["user"]), np.array(test["label"]), scores, is_new)
    return {"test": result, "expected": man["metrics"], "bundle": str(bundle.path)}


def compare(result: dict[str, Any]) -> float:
    """Largest absolute difference between recomputed and recorded metrics (AUC, GAUC, log loss)."""
    worst = 0.0
    for group in ("new", "old", "all"):
        for name in ("auc", "gauc", "logloss"):
            got, want = result["test"][group][name], result["expected"][group][name]
            if want is None or (isinstance(got, float) and math.isnan(got)):
                if not (want is None and math.isnan(got)):
                    return math.inf
                continue
            worst = max(worst, abs(got - want))
    return worst
