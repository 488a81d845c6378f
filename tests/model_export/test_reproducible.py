"""A run is a function of its seed: the same command in two processes, whose string hashes differ
(PYTHONHASHSEED), trains the same weights and reports the same metrics. The offline benchmark
relies on it: it resumes by cell, so the seeds of one table were often trained by different
processes, on different days."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
TIMINGS = {"train_seconds", "prepare_seconds"}


def _train(out: Path, hash_seed: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "model_export", "train", "--dataset", "synthetic", "--model", "mail"]
    command += ["--protocol", "strict", "--epochs", "2", "--seed", "3", "--out", str(out), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _metrics(run: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in TIMINGS}


def test_the_same_seed_in_two_processes_trains_the_same_run(tmp_path: Path) -> None:
    runs = {h: tmp_path / f"hash-{h}" for h in ("1", "2")}
    procs = {h: _train(out, h) for h, out in runs.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    a, b = (torch.load(runs[h] / "model.pt", weights_only=False) for h in ("1", "2"))
    for key in ("state_dict", "cold_state_dict"):
        assert a[key].keys() == b[key].keys()
        different = [name for name in a[key] if not torch.equal(a[key][name], b[key][name])]
        assert not different, f"{key}: {different}"
    assert _metrics(runs["1"]) == _metrics(runs["2"])
    assert (runs["1"] / "split.json").read_bytes() == (runs["2"] / "split.json").read_bytes()
