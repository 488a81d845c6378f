"""The benchmark's own ML-100K bundles (control and mail), built once and reused by content hash.

The key hashes the training arguments, the dataset files and the code that makes a bundle, so a
change to any of them builds anew; bundles live under the gitignored `.cache/bench-serving/`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".cache" / "bench-serving"
MODELS = ("control", "mail")
# `make run`'s recipe, at 3 epochs: strict protocol (new users are ids never seen), BaseDNN ranker
TRAIN = ["--dataset", "ml-100k", "--protocol", "strict", "--ranker", "base", "--behavior", "clicks"]
TRAIN += ["--seed", "0", "--epochs", "3"]
CODE = [
    "model_export/batches.py",
    "model_export/checkpoint.py",
    "model_export/cli.py",
    "model_export/data.py",
    "model_export/evaluation.py",
    "model_export/export.py",
    "model_export/parity.py",
    "model_export/features.py",
    "model_export/model.py",
    "model_export/pipeline.py",
    "model_export/protocol.py",
    "model_export/quantize.py",
    "model_export/train.py",
    "service/contract/__init__.py",
    "service/contract/bundle.py",
    "service/contract/errors.py",
    "service/contract/features.py",
    "service/contract/manifest.py",
    "service/contract/signatures.py",
    "service/contract/transforms.py",
]


def bundle_key(data_dir: Path) -> str:
    digest = hashlib.sha256(json.dumps(TRAIN).encode())
    for path in [*(REPO / c for c in CODE), *sorted((data_dir / "ml-100k").rglob("*"))]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def _valid(path: Path) -> bool:
    from service.contract import ContractError, load_bundle

    try:
        load_bundle(path)
    except ContractError:
        return False
    return True


def bench_bundles(data_dir: Path, log: bool = True) -> dict[str, Path]:
    """{"control": dir, "mail": dir}, trained and exported unless this key's bundles exist."""
    root = ROOT / bundle_key(data_dir)
    out = {m: root / "bundles" / m for m in MODELS}
    for model, bundle in out.items():
        if _valid(bundle):
            continue
        run = root / "runs" / model
        if log:
            print(f"  building bundle {model} under {root} (training 3 epochs, about a minute)", flush=True)
        py = sys.executable
        common = ["--data-dir", str(data_dir), "--model", model, "--out", str(run), "--quiet"]
        subprocess.run([py, "-m", "model_export", "train", *TRAIN, *common], check=True, cwd=REPO)
        export = [py, "-m", "model_export", "export", "--run", str(run), "--out", str(bundle)]
        subprocess.run(export, check=True, cwd=REPO)
    return out
