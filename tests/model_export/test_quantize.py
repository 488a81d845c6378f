"""The int8 and fp16 rankers: exported beside fp32, named in the manifest, served when chosen (fp16 on
CUDA only), close to fp32."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model_export.evaluate import compare, evaluate_bundle
from service.contract import (
    RANKER_FILES,
    BundleError,
    Precision,
    content_version,
    encode,
    load_bundle,
    ranker_feeds,
)
from service.inference import SessionOptions, Towers
from tests.model_export.bundle_files import copy_bundle, rewrite_manifest

BundleFactory = Callable[..., Path]


def _whole_catalog(towers: Towers) -> np.ndarray:
    bundle = towers.bundle
    enc = encode(bundle.schema, bundle.catalog, "new-user", {"segment": "s1"}, [], {"timestamp": 10**9})
    virtual = towers.virtual_behavior(enc.user_attrs)
    return towers.score(enc, virtual, 1.0, np.arange(1, len(bundle.catalog) + 1, dtype=np.int64))


@pytest.mark.parametrize("model", ["mail", "control"])
def test_int8_and_fp16_are_exported_beside_fp32_with_checksums_and_parity(
    tiny_bundle: BundleFactory, model: str
) -> None:
    bundle = load_bundle(tiny_bundle(model, "base"))
    man = bundle.manifest
    assert list(man.precisions) == ["fp32", "int8", "fp16"] and man.default_precision == "fp32"
    assert [p.device for p in man.precisions.values()] == ["any", "any", "cuda"]
    for name, precision in man.precisions.items():
        assert (precision.ranker, precision.ranker_batch) == RANKER_FILES[name]
        assert man.files[precision.ranker] == precision.ranker_sha256
        assert man.files[str(precision.ranker_batch)] == precision.ranker_batch_sha256
    assert man.precisions["fp32"].parity is None
    parity = man.precisions["int8"].parity
    assert parity is not None and parity.rows > 0 and parity.candidates == len(bundle.catalog)
    assert (
        0 < parity.scores_max_abs_diff < 0.05 and 0 < parity.scores_mean_abs_diff < parity.scores_max_abs_diff
    )
    assert 0.8 <= parity.top10_agreement <= 1.0
    assert parity.batch_scores_max_abs_diff is not None and parity.batch_scores_max_abs_diff < 0.05
    half = man.precisions["fp16"].parity
    assert half is not None and half.candidates == len(bundle.catalog)
    assert 0 < half.scores_max_abs_diff < 5e-3 and half.top10_agreement >= 0.9
    assert half.batch_scores_max_abs_diff is not None and half.batch_scores_max_abs_diff < 5e-3


def test_fp16_is_float16_inside_float32_outside_and_refused_on_a_cpu(tiny_bundle: BundleFactory) -> None:
    import onnx
    import onnxruntime as ort

    bundle = load_bundle(tiny_bundle("mail", "base"))
    graph = onnx.load(str(bundle.path / bundle.precisions["fp16"].ranker)).graph
    assert {t.data_type for t in graph.initializer if t.data_type in (1, 10)} == {10}  # FLOAT16 only
    assert all(v.type.tensor_type.elem_type != 10 for v in [*graph.input, *graph.output])  # no FLOAT16
    with pytest.raises(BundleError, match="fp16 ranker is for CUDA; it would run on cpu"):
        Towers(bundle, SessionOptions(device="cpu", ranker_precision="fp16"))
    # what a GPU would be given: the same inputs, scores close to fp32's (here by ONNX Runtime's CPU)
    fp32 = Towers(bundle, SessionOptions(device="cpu"))
    half = ort.InferenceSession(
        str(bundle.path / bundle.precisions["fp16"].ranker), providers=["CPUExecutionProvider"]
    )
    enc = encode(bundle.schema, bundle.catalog, "new-user", {"segment": "s1"}, [], {"timestamp": 10**9})
    virtual = fp32.virtual_behavior(enc.user_attrs)
    rows = np.arange(1, len(bundle.catalog) + 1, dtype=np.int64)
    feeds = ranker_feeds((enc,), virtual, np.ones((1, 1), np.float32), rows)
    diff = np.abs(half.run(None, feeds)[0] - fp32.score(enc, virtual, 1.0, rows))
    assert 0 < diff.max() < 5e-3


def test_int8_scores_are_close_to_fp32_and_not_the_same(tiny_bundle: BundleFactory) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    fp32 = Towers(bundle, SessionOptions(device="cpu"))
    int8 = Towers(bundle, SessionOptions(device="cpu", ranker_precision="int8", microbatch="on"))
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    a, b = _whole_catalog(fp32), _whole_catalog(int8)
    diff = np.abs(a - b)
    assert 0 < diff.max() < 0.05  # a different graph, and close
    int8.check_golden()  # fp32's golden scores, within int8's recorded tolerance
    assert int8.golden_atol == bundle.precisions["int8"].golden_atol >= 0.02
    with pytest.raises(BundleError, match="golden scores differ"):
        int8.check_golden(atol=1e-7)  # the fp32 tolerance is too tight for int8
    assert int8.describe_device()["ranker_precision"] == "int8"


def test_the_default_precision_is_served_unless_the_setting_overrides_it(
    tiny_run: Callable[..., Path], tmp_path: Path
) -> None:
    from model_export.export import export_bundle

    manifest = export_bundle(tiny_run("control", "base"), tmp_path / "b", default_precision="int8")
    assert manifest.default_precision == "int8"
    bundle = load_bundle(tmp_path / "b")
    assert Towers(bundle, SessionOptions(device="cpu")).precision == "int8"
    assert Towers(bundle, SessionOptions(device="cpu", ranker_precision="fp32")).precision == "fp32"
    with pytest.raises(ValueError, match="unknown ranker precision 'int4'"):
        Towers(bundle, SessionOptions(device="cpu", ranker_precision="int4"))
    with pytest.raises(ValueError, match="fp32 or int8"):
        export_bundle(tiny_run("control", "base"), tmp_path / "c", default_precision="fp16")


def test_a_bundle_from_before_precisions_serves_fp32(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    root = copy_bundle(tiny_bundle("mail", "base"), tmp_path)

    def as_before(m: dict) -> None:  # type: ignore[type-arg]
        del m["precisions"], m["default_precision"]
        for name in (*RANKER_FILES["int8"], *RANKER_FILES["fp16"]):
            del m["files"][name]
            (root / name).unlink()
        m["model_version"] = content_version(m["files"])

    rewrite_manifest(root, as_before)
    bundle = load_bundle(root)
    assert bundle.manifest.precisions == {} and bundle.default_precision == "fp32"
    assert list(bundle.precisions) == ["fp32"] and bundle.precisions["fp32"].ranker == "ranker.onnx"
    assert "precisions" not in bundle.manifest.to_dict()  # it reads back as it was written
    towers = Towers(bundle, SessionOptions(device="cpu", microbatch="on"))
    assert towers.precision == "fp32" and towers.ranker_batch is not None
    towers.check_golden()
    with pytest.raises(BundleError, match=r"no int8 ranker in this bundle \(it has fp32\)"):
        Towers(bundle, SessionOptions(device="cpu", ranker_precision="int8"))


def test_precision_round_trip_and_refusals(tiny_bundle: BundleFactory, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle("control", "base"))
    for precision in bundle.precisions.values():
        assert Precision.from_dict(json.loads(json.dumps(precision.to_dict()))) == precision
    root = copy_bundle(tiny_bundle("control", "base"), tmp_path)
    rewrite_manifest(root, lambda m: m["precisions"]["int8"].update(ranker_sha256="0" * 64))
    with pytest.raises(BundleError, match="precision int8: ranker_int8.onnx is not listed with its checksum"):
        load_bundle(root)
    rewrite_manifest(
        root, lambda m: m["precisions"]["int8"].update(ranker_sha256=m["files"]["ranker_int8.onnx"])
    )
    load_bundle(root)
    rewrite_manifest(root, lambda m: m.update(default_precision="int4"))
    with pytest.raises(BundleError, match="default precision 'int4' is not in the bundle"):
        load_bundle(root)
    rewrite_manifest(root, lambda m: m.update(default_precision="fp16"))
    with pytest.raises(BundleError, match="default precision 'fp16' is for cuda only"):
        load_bundle(root)


def test_evaluate_runs_either_precision(tiny_bundle: BundleFactory) -> None:
    fp32 = evaluate_bundle(tiny_bundle("mail", "base"), None, progress=False, precision="fp32")
    int8 = evaluate_bundle(tiny_bundle("mail", "base"), None, progress=False, precision="int8")
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert compare(fp32) <= 1e-4
    assert abs(int8["test"]["all"]["auc"] - fp32["test"]["all"]["auc"]) < 0.01


def test_the_cli_exports_a_default_and_evaluates_a_precision(
    tiny_run: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_export.cli import main

    out = tmp_path / "bundle"
    assert (
        main(
            [
                "export",
                "--run",
                str(tiny_run("mail", "base")),
                "--out",
                str(out),
                "--default-precision",
                "int8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "int8 vs fp32 (whole catalog" in printed and "default precision: int8" in printed
    assert main(["evaluate", "--bundle", str(out), "--quiet"]) == 0  # the default: int8, reported only
    printed = capsys.readouterr().out
    assert "ranker precision: int8" in printed and "reported, not held to them" in printed
    assert main(["evaluate", "--bundle", str(out), "--precision", "fp32", "--quiet"]) == 0
    assert "ranker precision: fp32" in capsys.readouterr().out


@pytest.mark.parametrize("ranker", ["base", "din"])
def test_int8_quantizes_the_per_candidate_hidden_layers_only(tiny_bundle: BundleFactory, ranker: str) -> None:
    """The hidden layers (BaseDNN's `top`, DIN's `head`) in int8; the user's projection, the
    behavior pooling and the output layer, whose error would land on the logit, stay fp32."""
    import onnx

    bundle = load_bundle(tiny_bundle("mail", ranker))
    for path in (
        bundle.path / bundle.precisions["int8"].ranker,
        bundle.path / str(bundle.precisions["int8"].ranker_batch),
    ):
        nodes = onnx.load(str(path)).graph.node
        quantized = [n.name for n in nodes if n.op_type == "MatMulInteger"]
        layer = "top" if ranker == "base" else "head"
        assert quantized and all(f"/{layer}/" in name for name in quantized), quantized
        dense = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")]
        assert any("/out/" in name for name in dense), dense  # the output layer is still fp32
        assert not any(f"/{layer}/" in name for name in dense), dense
