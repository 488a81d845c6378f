"""Shared fixtures: the real data folder, and tiny trained runs and bundles on synthetic data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    raw = os.environ.get("MAILREC_DATA_DIR")
    path = Path(raw) if raw else REPO.parent / "shared" / "data"
    return path if (path / "ml-100k").is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real datasets not found: set MAILREC_DATA_DIR (CI sets it to ../shared/data)")
    return path


TinyRun = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Train (once per argument set) a small model on synthetic data; returns its RUN_DIR."""
    from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.pipeline import RunSpec, run
    from model_export.train import TrainConfig

    cache: dict[tuple[str, str, str], Path] = {}

    def make(model: str = "mail", ranker: str = "base", fill: str = "hard") -> Path:
        key = (model, ranker, fill)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"run-{model}-{ranker}-{fill}")
            spec = RunSpec(
                dataset="synthetic",
                protocol="strict",
                seed=0,
                behavior_len=8,
                d_embed=8,
                model=ModelConfig(
                    model=model,
                    # the prior of a segment chosen on validation: the synthetic "segment"
                    ranker=RankerConfig(
                        kind=ranker, hidden=(32, 16), d_attention=16, item_prior=True, prior_segment="auto"
                    ),
                    zero_shot=ZeroShotConfig(d_hidden=16, width=32, d_attention=16)
                    if model == "mail"
                    else None,
                    fill=fill,
                ),
                train=TrainConfig(epochs=4, lr=5e-3, lr_zst=5e-3, batch_size=256, progress=False),
            )
            run(spec, out)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Export (once per argument set) a tiny run; returns the bundle directory."""
    from model_export.export import export_bundle

    cache: dict[tuple[str, str], Path] = {}

    def make(model: str = "mail", ranker: str = "base") -> Path:
        if (model, ranker) not in cache:
            out = tmp_path_factory.mktemp("bundles") / f"{model}-{ranker}"
            export_bundle(tiny_run(model, ranker), out)
            cache[(model, ranker)] = out
        return cache[(model, ranker)]

    return make


@pytest.fixture(scope="session")
def ml_bundles(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make run`'s bundles at small scale: control and mail on MovieLens 100K (strict, 1 epoch).

    Returns the folder holding control/ and mail/ (MAILREC_BUNDLE_DIR).
    """
    from model_export.export import export_bundle
    from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.pipeline import RunSpec, prepare, run
    from model_export.train import TrainConfig

    root = tmp_path_factory.mktemp("ml-bundles")
    spec = RunSpec(
        dataset="ml-100k",
        data_dir=str(data_dir),
        protocol="strict",
        behavior="clicks",
        train=TrainConfig(epochs=1, progress=False),
    )
    prepared = prepare(spec)
    for model in ("control", "mail"):
        spec.model = ModelConfig(
            model=model, ranker=RankerConfig(), zero_shot=ZeroShotConfig() if model == "mail" else None
        )
        run(spec, root / f"run-{model}", prepared)
        export_bundle(root / f"run-{model}", root / "bundles" / model)
    return root / "bundles"
