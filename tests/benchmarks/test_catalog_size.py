"""benchmarks.catalog_size: the synthetic catalogs it exports are valid bundles of the asked size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.catalog_size import synthetic_run
from model_export.export import export_bundle
from service.contract import load_bundle


@pytest.mark.parametrize("delta", [-20, 150])
def test_synthetic_catalogs_export_as_valid_bundles(
    tiny_run: Callable[..., Path], tmp_path: Path, delta: int
) -> None:
    run = tiny_run("mail", "base")
    export_bundle(run, tmp_path / "real")
    real = load_bundle(tmp_path / "real")
    size = len(real.catalog) + delta
    export_bundle(synthetic_run(run, size, tmp_path / "r"), tmp_path / "b")  # checks itself
    bundle = load_bundle(tmp_path / "b")
    assert len(bundle.catalog) == size
    assert bundle.item_vectors_path is not None
    assert np.load(bundle.item_vectors_path).shape[0] == size + 1
    if delta > 0:  # the real items first, then new ones made of real items' fields
        assert bundle.catalog.ids[: len(real.catalog)] == real.catalog.ids
        assert bundle.catalog.popularity is not None and len(bundle.catalog.popularity) == size


@pytest.mark.parametrize("keep", [False, True])
def test_keep_leaves_each_size_bundle_to_serve(
    tiny_run: Callable[..., Path], tmp_path: Path, keep: bool
) -> None:
    from benchmarks.catalog_size import main

    run = tiny_run("mail", "base")
    work, out = tmp_path / "work", tmp_path / "out"
    export_bundle(run, tmp_path / "real")
    size = len(load_bundle(tmp_path / "real").catalog) + 30
    argv = ["--run", str(run), "--sizes", str(size), "--calls", "1", "--work", str(work), "--out", str(out)]
    assert main([*argv, "--keep"] if keep else argv) == 0
    assert (out / "catalog-size.md").is_file()
    assert not (work / f"run-{size}").exists()  # the synthetic run is always removed
    if keep:
        assert len(load_bundle(work / f"bundle-{size}").catalog) == size
    else:
        assert not (work / f"bundle-{size}").exists()
