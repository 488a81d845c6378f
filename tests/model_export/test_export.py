from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_export.evaluate import compare, evaluate_bundle
from service.contract import (
    MANIFEST,
    RANKER_FILE,
    RANKER_NO_HISTORY_FILE,
    ZERO_SHOT_FILE,
    Bundle,
    BundleError,
    ColdCheckpoint,
    Encoded,
    Fill,
    content_version,
    load_bundle,
    ranker_feeds,
    sha256_file,
)
from service.inference import SessionOptions, Towers
from tests.conftest import REPO
from tests.model_export.bundle_files import copy_bundle, rewrite_manifest

BundleFactory = Callable[..., Path]


@pytest.mark.parametrize("model", ["mail", "control"])
@pytest.mark.parametrize("ranker", ["base", "din"])
def test_export_parity(tiny_bundle: BundleFactory, model: str, ranker: str) -> None:
    bundle = load_bundle(tiny_bundle(model, ranker))
    parity = bundle.manifest.parity
    assert parity.scores_max_abs_diff <= 1e-5
    assert parity.virtual_max_abs_diff <= 1e-4
    assert parity.rows > 0 and 10_000 in parity.candidate_counts and 1 in parity.candidate_counts
    assert (bundle.zero_shot_path is not None) == (model == "mail")
    if model == "control":
        assert "no zero-shot tower" in str(bundle.manifest.zero_shot_absent_reason)
    assert bundle.manifest.ranker == ranker
    towers = Towers(bundle, SessionOptions(device="cpu"))
    towers.warm_up()
    towers.check_golden()


def test_a_one_layer_ranker_trains_from_the_cli_and_exports_with_parity(tmp_path: Path) -> None:
    """`--hidden` sets the ranking tower's widths (the narrower towers of the width screen,
    catalog-task.md); one hidden layer leaves no MLP between the first layer and the logit, and that
    graph exports with the usual parity. Without the flag the tower keeps `RankerConfig`'s widths."""
    from model_export.cli import main
    from model_export.model import RankerConfig

    def trained(*extra: str) -> tuple[list[int], Path]:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        args = ["train", "--dataset", "synthetic", "--model", "mail", "--epochs", "1", "--quiet"]
        assert main([*args, *extra, "--out", str(out)]) == 0
        return json.loads((out / "config.json").read_text())["model"]["ranker"]["hidden"], out

    widths, run_dir = trained("--hidden", "16")
    assert widths == [16]
    assert trained()[0] == list(RankerConfig.hidden) == [256, 128]
    bundle_dir = tmp_path / "bundle"
    assert main(["export", "--run", str(run_dir), "--out", str(bundle_dir)]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.parity.scores_max_abs_diff <= 1e-5
    assert bundle.manifest.parity.virtual_max_abs_diff <= 1e-4
    Towers(bundle, SessionOptions(device="cpu")).check_golden()


@pytest.mark.parametrize("ranker", ["din", "base"])
def test_a_tower_with_weights_of_its_own_for_virtual_behavior_trains_from_the_cli_and_serves(
    tmp_path: Path, ranker: str
) -> None:
    """`--virtual-attention own` (MAIL; DIN: a second attention unit, BaseDNN: columns of its own in
    the first layer, its default on the catalog task): the run records it, the bundle exports with
    the usual parity, and the service's sessions pass the golden check (BaseDNN's:
    ranker_no_history.onnx against ranker.onnx too)."""
    from model_export.cli import main

    run_dir, bundle_dir = tmp_path / "run", tmp_path / "bundle"
    args = ["train", "--dataset", "synthetic", "--model", "mail", "--epochs", "1", "--quiet"]
    flag = ["--virtual-attention", "own"] if ranker == "din" else []  # BaseDNN: by default
    assert main([*args, "--ranker", ranker, *flag, "--out", str(run_dir)]) == 0
    assert json.loads((run_dir / "config.json").read_text())["model"]["ranker"]["virtual_attention"] == "own"
    assert main(["export", "--run", str(run_dir), "--out", str(bundle_dir)]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.parity.scores_max_abs_diff <= 1e-5
    assert (bundle_dir / "ranker_no_history.onnx").exists() == (ranker == "base")
    assert bundle.manifest.fill.virtual_reading == "own"  # /models shows it
    Towers(bundle, SessionOptions(device="cpu")).check_golden()
    older = {"mode": "hard", "tau": 3.0, "in_training": True}  # a manifest from before the field
    assert Fill.from_dict(older).virtual_reading == "shared" and Fill.from_dict(older).to_dict() == older


@pytest.mark.parametrize(
    "extra",
    [["--model", "control"], ["--model", "mail", "--task", "rating"], ["--model", "mail", "--ranker", "din"],
     ["--model", "mail", "--virtual-attention", "shared"]],
)  # fmt: skip
def test_the_virtual_behavior_keeps_the_shared_reading_outside_basednn_mail_on_the_catalog_task(
    tmp_path: Path, extra: list[str]
) -> None:
    """The own columns are the default of MAIL on BaseDNN on the catalog task alone (where
    validation chose them); control, the rating task (the paper's comparison), DIN and an explicit
    `--virtual-attention shared` record the shared reading."""
    from model_export.cli import main

    args = ["train", "--dataset", "synthetic", "--epochs", "1", "--quiet", *extra, "--out", str(tmp_path)]
    assert main(args) == 0
    assert (
        json.loads((tmp_path / "config.json").read_text())["model"]["ranker"]["virtual_attention"] == "shared"
    )


def test_ranker_scores_the_whole_catalog_and_more_in_one_call(tiny_bundle: BundleFactory) -> None:
    bundle = load_bundle(tiny_bundle("mail", "din"))
    towers = Towers(bundle)
    schema = bundle.schema
    from service.contract import encode

    enc = encode(schema, bundle.catalog, "new-user", {"segment": "s1"}, [], {"timestamp": 1_000_000_000})
    virtual = towers.virtual_behavior(enc.user_attrs)
    for n in (1, len(bundle.catalog), 12_000):
        cands = (np.arange(n) % len(bundle.catalog) + 1).astype(np.int64)
        scores = towers.score(enc, virtual, 1.0, cands)
        assert scores.shape == (n,) and np.isfinite(scores).all()
    one = towers.score(enc, virtual, 1.0, np.array([5], np.int64))
    many = towers.score(enc, virtual, 1.0, np.arange(1, 50, dtype=np.int64))
    assert one[0] == pytest.approx(many[4], abs=1e-6)


def test_evaluate_reproduces_the_run_metrics(tiny_bundle: BundleFactory) -> None:
    result = evaluate_bundle(tiny_bundle("mail", "base"), None, progress=False)
    assert compare(result) <= 1e-4


@pytest.mark.slow  # trains on MovieLens 100K
def test_evaluate_on_real_data_matches_within_1e4(data_dir: Path, tmp_path: Path) -> None:
    from model_export.cli import main

    run_dir, bundle_dir = tmp_path / "run", tmp_path / "bundle"
    assert (
        main(
            [
                "train",
                "--dataset",
                "ml-100k",
                "--data-dir",
                str(data_dir),
                "--protocol",
                "strict",
                "--model",
                "mail",
                "--ranker",
                "base",
                "--epochs",
                "1",
                "--out",
                str(run_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["export", "--run", str(run_dir), "--out", str(bundle_dir)]) == 0
    assert main(["evaluate", "--bundle", str(bundle_dir), "--data-dir", str(data_dir), "--quiet"]) == 0


def test_missing_file_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)
    (root / ZERO_SHOT_FILE).unlink()
    with pytest.raises(BundleError, match="missing file zero_shot.onnx"):
        load_bundle(root)


def test_checksum_mismatch_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)
    data = bytearray((root / RANKER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (root / RANKER_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for ranker.onnx"):
        load_bundle(root)


def test_unknown_format_version_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("control", "base"), tmp_path)
    rewrite_manifest(root, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99, this service reads 1"):
        load_bundle(root)


def test_onnx_signature_that_differs_from_the_manifest_is_refused(
    tiny_bundle: BundleFactory, tmp_path: Path
) -> None:
    """A ranker.onnx with consistent checksums but the wrong graph: the zero-shot tower's."""
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)
    shutil.copyfile(root / ZERO_SHOT_FILE, root / RANKER_FILE)

    def fix_sums(m: dict) -> None:  # type: ignore[type-arg]
        m["files"][RANKER_FILE] = sha256_file(root / RANKER_FILE)
        m["precisions"]["fp32"]["ranker_sha256"] = m["files"][RANKER_FILE]  # named twice: both agree
        m["model_version"] = content_version(m["files"])

    rewrite_manifest(root, fix_sums)
    bundle = load_bundle(root)  # the manifest is consistent: the graph is checked when it is opened
    with pytest.raises(BundleError, match=r"ranker.onnx inputs are \[\('user_attrs', 'int64', 2\)\]"):
        Towers(bundle, SessionOptions(device="cpu"))


def test_the_manifest_reads_back_as_export_wrote_it(tiny_bundle: BundleFactory) -> None:
    for model in ("mail", "control"):
        root = tiny_bundle(model, "base")
        manifest = load_bundle(root).manifest
        assert json.dumps(manifest.to_dict(), indent=2) == (root / MANIFEST).read_text()


def test_a_manifest_from_before_the_catalog_task_loads_with_its_defaults(
    tiny_bundle: BundleFactory, tmp_path: Path
) -> None:
    root = copy_bundle(tiny_bundle("control", "base"), tmp_path)

    def drop_later_keys(m: dict) -> None:  # type: ignore[type-arg]
        del m["task"], m["ranking_metrics"], m["parity"]["ranker_batch"]

    rewrite_manifest(root, drop_later_keys)
    manifest = load_bundle(root).manifest
    assert manifest.task == {"task": "rating"} and manifest.ranking_metrics is None
    assert manifest.parity.ranker_batch is None and manifest.parity.rows > 0


def test_a_malformed_manifest_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("control", "base"), tmp_path)
    rewrite_manifest(root, lambda m: m.pop("fill"))
    with pytest.raises(BundleError, match="manifest.json is malformed"):
        load_bundle(root)


def test_tampered_model_version_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("control", "din"), tmp_path)
    rewrite_manifest(root, lambda m: m.update(model_version="0123456789ab"))
    with pytest.raises(BundleError, match="does not match the file checksums"):
        load_bundle(root)


def test_export_replaces_a_bundle_atomically(tiny_run: Callable[..., Path], tmp_path: Path) -> None:
    from model_export.export import export_bundle

    out = tmp_path / "bundles" / "mail"
    first = export_bundle(tiny_run("mail", "base"), out)
    second = export_bundle(tiny_run("control", "base"), out)
    assert load_bundle(out).version == second.model_version != first.model_version
    assert sorted(p.name for p in out.parent.iterdir()) == ["mail"]  # no temporary leftovers


def test_model_version_is_a_content_hash(tiny_run: Callable[..., Path], tmp_path: Path) -> None:
    from model_export.export import export_bundle

    a = export_bundle(tiny_run("mail", "base"), tmp_path / "a")
    b = export_bundle(tiny_run("mail", "base"), tmp_path / "b")
    assert a.model_version == b.model_version  # same weights, same version
    assert a.model_version == content_version(a.files)


def test_service_never_imports_torch_or_model_export() -> None:
    code = (
        "import sys, service, service.contract, service.inference\n"
        "import importlib.util\n"
        "mods = [m for m in ('service.main',) if importlib.util.find_spec(m)]\n"
        "for m in mods: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model_export'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_cold_checkpoint_is_a_sub_bundle_the_parent_pins(
    tiny_run: Callable[..., Path], tiny_bundle: BundleFactory
) -> None:
    import torch

    ckpt = torch.load(tiny_run("mail", "base") / "model.pt", weights_only=False)
    bundle = load_bundle(tiny_bundle("mail", "base"))
    cold, pin = bundle.cold, bundle.manifest.cold_checkpoint
    assert cold is not None and pin is not None  # this tiny run's new users peak at another epoch
    assert pin.epoch == ckpt["cold_epoch"] and pin.dir == "cold" and cold.path == bundle.path / "cold"
    assert pin.scale == ckpt["cold_scale"]  # what its learned logit was scaled by, said
    assert pin.clicks == ckpt["cold_clicks"] > 1  # whom it scores: unknown ids with fewer clicks
    older = ColdCheckpoint.from_dict({"dir": "cold", "model_version": "v", "epoch": 3})
    assert (older.scale, older.clicks) == (1.0, 1)  # a bundle from before either: as trained, no history
    assert pin.model_version == cold.version != bundle.version
    assert all(bundle.manifest.files[f"cold/{n}"] == d for n, d in cold.manifest.files.items())
    assert cold.manifest.cold_checkpoint is None and cold.schema == bundle.schema
    # other weights: the two score the same golden user differently
    assert cold.manifest.golden[0].scores != bundle.manifest.golden[0].scores


def test_a_cold_checkpoint_changed_or_swapped_is_refused(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)
    data = bytearray((root / "cold" / RANKER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (root / "cold" / RANKER_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for cold/ranker.onnx"):
        load_bundle(root)
    # a complete, valid bundle in its place (the parent's own graphs): not the files the parent lists
    shutil.rmtree(root / "cold")
    shutil.copytree(tiny_bundle("mail", "base"), root / "cold", ignore=shutil.ignore_patterns("cold"))

    def standalone(m: dict[str, Any]) -> None:
        del m["cold_checkpoint"]
        m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("cold/")}
        m["model_version"] = content_version(m["files"])

    rewrite_manifest(root / "cold", standalone)
    load_bundle(root / "cold")
    with pytest.raises(BundleError, match="checksum mismatch for cold/"):
        load_bundle(root)
    other = copy_bundle(tiny_bundle("mail", "base"), tmp_path / "other")
    rewrite_manifest(other, lambda m: m["cold_checkpoint"].update(dir="../elsewhere"))
    with pytest.raises(BundleError, match="not a plain name"):
        load_bundle(other)


def _cold_user(bundle: Bundle) -> tuple[Encoded, np.ndarray, np.ndarray]:
    """A golden case's user without behavior, its virtual behavior and gate as ranker.onnx takes them."""
    case = bundle.manifest.golden[0]
    cold = replace(case.encoded, behavior=np.zeros_like(case.encoded.behavior), n_history=0)
    return cold, case.candidates, np.full((1, 1), case.gate, np.float32)


def test_a_user_without_behavior_is_scored_by_the_no_history_graph(tiny_bundle: BundleFactory) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    assert bundle.manifest.ranker_no_history == RANKER_NO_HISTORY_FILE
    assert bundle.cold is not None and bundle.cold.manifest.ranker_no_history == RANKER_NO_HISTORY_FILE
    towers = Towers(bundle, SessionOptions(device="cpu"))
    assert towers.ranker_no_history is not None and "ranker_no_history" in towers.sessions()
    cold, candidates, gates = _cold_user(bundle)
    virtual = towers.virtual_behavior(cold.user_attrs)
    full = towers.ranker.run(None, ranker_feeds((cold,), virtual, gates, candidates))[0]
    served = towers.score(cold, virtual, float(gates[0, 0]), candidates)
    np.testing.assert_allclose(served, full, atol=1e-6)
    # a user with a click goes through ranker.onnx: same answer as calling it directly
    warm = cold.with_history(candidates[:1])
    direct = towers.ranker.run(None, ranker_feeds((warm,), virtual, gates, candidates))[0]
    np.testing.assert_array_equal(towers.score(warm, virtual, float(gates[0, 0]), candidates), direct)
    # off by setting, and for a precision other than fp32 (the graph is fp32)
    assert Towers(bundle, SessionOptions(device="cpu", no_history_graph=False)).ranker_no_history is None
    assert Towers(bundle, SessionOptions(device="cpu", ranker_precision="int8")).ranker_no_history is None
    # DIN's tower has no smaller graph for it
    assert load_bundle(tiny_bundle("mail", "din")).manifest.ranker_no_history is None


def test_a_no_history_graph_that_scores_differently_is_refused(
    tiny_bundle: BundleFactory, tmp_path: Path
) -> None:
    """The cold checkpoint's no-history graph in the parent's place, checksums rewritten to match:
    a valid file with the wrong weights, which only the golden check can catch."""
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)
    shutil.copyfile(root / "cold" / RANKER_NO_HISTORY_FILE, root / RANKER_NO_HISTORY_FILE)

    def rehash(m: dict[str, Any]) -> None:
        m["files"][RANKER_NO_HISTORY_FILE] = sha256_file(root / RANKER_NO_HISTORY_FILE)
        m["model_version"] = content_version(m["files"])

    rewrite_manifest(root, rehash)
    bundle = load_bundle(root)
    towers = Towers(bundle, SessionOptions(device="cpu"))
    with pytest.raises(BundleError, match="ranker_no_history differs from ranker"):
        towers.check_golden()
    Towers(bundle, SessionOptions(device="cpu", no_history_graph=False)).check_golden()
