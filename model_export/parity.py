"""Parity of the exported ONNX graphs with the torch model they came from, on real test rows.

`verify_parity` runs `ranker.onnx` (and `zero_shot.onnx`) in onnxruntime against torch: scores
within `SCORE_ATOL`, virtual behavior within `VIRTUAL_ATOL`, candidate lists from 1 to beyond
the catalog; it also records the golden cases the service recomputes at load.
`verify_batch_parity` holds `ranker_batch.onnx` to torch within `SCORE_ATOL`, and compares it
with `ranker.onnx` user by user (the manifest records whether the two agree exactly). Past a
tolerance both raise `ExportError`, and no bundle is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.model import MailModel, UserInputs
from service.contract import (
    RANKER_INPUTS,
    BatchParity,
    Encoded,
    GoldenCase,
    Parity,
    blend_gate,
    ranker_feeds,
)

SCORE_ATOL = 1e-5
VIRTUAL_ATOL = 1e-4
GOLDEN_CASES = 3  # recorded from the first rows with at most GOLDEN_MAX_CANDIDATES candidates
GOLDEN_MAX_CANDIDATES = 200
GOLDEN_KEPT = 16  # candidates and scores kept of each golden case


class ExportError(RuntimeError):
    """Export refused: the ONNX graphs do not reproduce the torch model."""


def cpu_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def recorded_user_inputs(test_rows: dict[str, Any], i: int, model: MailModel) -> tuple[Encoded, float]:
    """Row i of the run's recorded test rows as the ranker's user inputs, and its gate."""
    behavior = np.asarray(test_rows["behavior"][i : i + 1], np.int64)
    n = int((behavior > 0).sum())
    cfg = model.cfg
    gate = blend_gate(n, cfg.fill, cfg.blend_tau) if model.zst is not None else 0.0
    enc = Encoded(
        np.asarray(test_rows["user_attrs"][i : i + 1], np.int64),
        np.asarray(test_rows["context"][i : i + 1], np.int64),
        behavior,
        n,
    )
    return enc, gate


def verify_parity(
    model: MailModel,
    test_rows: dict[str, Any],
    ranker_path: Path,
    zst_path: Path | None,
    n_catalog: int,
) -> tuple[Parity, list[GoldenCase]]:
    """onnxruntime vs torch on real test rows; raises ExportError past the tolerances."""
    ranker = cpu_session(ranker_path)
    zst = cpu_session(zst_path) if zst_path else None
    rng = np.random.default_rng(0)
    worst_score = worst_virtual = 0.0
    golden: list[GoldenCase] = []
    rows = len(test_rows["user_attrs"])
    sizes = [1, 7, 200, n_catalog, 10_000]
    for i in range(rows):
        enc, gate = recorded_user_inputs(test_rows, i, model)
        attrs_t = torch.from_numpy(enc.user_attrs)
        with torch.no_grad():
            v_torch = model.virtual_behavior(attrs_t).numpy()
        if zst is not None:
            v_ort = zst.run(None, {"user_attrs": enc.user_attrs})[0]
            worst_virtual = max(worst_virtual, float(np.max(np.abs(v_ort - v_torch))))
        else:
            v_ort = v_torch
        n = sizes[i % len(sizes)]
        cands = rng.integers(1, n_catalog + 1, n).astype(np.int64)
        cands[0] = int(test_rows["item"][i])
        gates = np.full((1, 1), gate, np.float32)
        s_ort = ranker.run(None, ranker_feeds((enc,), v_ort.astype(np.float32), gates, cands))[0]
        with torch.no_grad():
            user = UserInputs(
                attrs_t,
                torch.from_numpy(enc.context),
                torch.from_numpy(enc.behavior),
                torch.from_numpy(v_torch),
                torch.full((1, 1), gate),
            )
            s_torch = torch.sigmoid(model.ranker(user, torch.from_numpy(cands))).numpy()
        if s_ort.shape != (n,):
            raise ExportError(f"ranker returned shape {s_ort.shape} for {n} candidates")
        worst_score = max(worst_score, float(np.max(np.abs(s_ort - s_torch))))
        if len(golden) < GOLDEN_CASES and n <= GOLDEN_MAX_CANDIDATES:
            golden.append(GoldenCase(enc, gate, cands[:GOLDEN_KEPT], s_ort[:GOLDEN_KEPT]))
    if worst_score > SCORE_ATOL or worst_virtual > VIRTUAL_ATOL:
        raise ExportError(
            f"onnxruntime disagrees with torch: scores {worst_score:.2e} (max {SCORE_ATOL}), "
            f"virtual behavior {worst_virtual:.2e} (max {VIRTUAL_ATOL})"
        )
    counts = tuple(sorted({sizes[i % len(sizes)] for i in range(rows)}))
    return Parity(rows, counts, worst_score, worst_virtual), golden


def verify_batch_parity(
    model: MailModel, test_rows: dict[str, Any], ranker_path: Path, batch_path: Path, n_catalog: int
) -> BatchParity:
    """ranker_batch.onnx against torch (within SCORE_ATOL) and against ranker.onnx user by user."""
    single = cpu_session(ranker_path)
    batch = cpu_session(batch_path)
    rng = np.random.default_rng(1)
    n_users = min(len(test_rows["user_attrs"]), 6)
    sizes = [1, 7, 100, n_catalog, 3, 250][:n_users]
    users, gate_list = zip(*(recorded_user_inputs(test_rows, i, model) for i in range(n_users)), strict=True)
    with torch.no_grad():
        virtual = model.virtual_behavior(torch.from_numpy(np.concatenate([u.user_attrs for u in users])))
    virtuals = virtual.numpy().astype(np.float32)
    gates = np.array([[g] for g in gate_list], np.float32)
    cands = [rng.integers(1, n_catalog + 1, n).astype(np.int64) for n in sizes]
    owner = np.concatenate([np.full(len(c), u, np.int64) for u, c in enumerate(cands)])
    feeds = ranker_feeds(users, virtuals, gates, np.concatenate(cands), owner)
    together = batch.run(None, feeds)[0]
    alone = np.concatenate(
        [
            single.run(None, ranker_feeds(users[u : u + 1], virtuals[u : u + 1], gates[u : u + 1], c))[0]
            for u, c in enumerate(cands)
        ]
    )
    with torch.no_grad():
        user = UserInputs(*(torch.from_numpy(feeds[k]) for k in RANKER_INPUTS[:5]))
        ref = torch.sigmoid(
            model.ranker(user, torch.from_numpy(np.concatenate(cands)), torch.from_numpy(owner))
        )
    worst = float(np.max(np.abs(together - ref.numpy())))
    if together.shape != alone.shape or worst > SCORE_ATOL:
        raise ExportError(f"ranker_batch disagrees with torch: {worst:.2e} (max {SCORE_ATOL})")
    return BatchParity(
        users=n_users,
        candidates=int(len(owner)),
        scores_max_abs_diff=worst,
        equals_ranker_exactly=bool(np.array_equal(together, alone)),
        max_abs_diff_vs_ranker=float(np.max(np.abs(together - alone))),
    )
