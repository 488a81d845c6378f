"""The bundle load benchmark measures every stage and writes its report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from benchmarks.bundle_load import main


def test_bundle_load_reports_every_stage(tiny_bundle: Callable[..., Path], tmp_path: Path) -> None:
    bundles = [tiny_bundle("control"), tiny_bundle("mail")]
    out = tmp_path / "bundle-load"
    assert main([*map(str, bundles), "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    control, mail = result["bundles"]
    assert (control["model"], mail["model"]) == ("control", "mail")
    assert "zero_shot.onnx" in mail["files"] and "zero_shot.onnx" not in control["files"]
    assert mail["cold_checkpoint"] and "cold/zero_shot.onnx" in mail["files"]  # its sessions load too
    for row, path in zip((control, mail), bundles, strict=True):
        assert row["bytes"] == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        assert row["cold_checkpoint"] == (path / "cold").is_dir()
        stages = row["median_ms"]
        assert all(stages[k] > 0 for k in ("validate", "sessions", "golden", "warm_up"))
        assert row["ratio_to_bare_sessions"] > 0
    assert "| control |" in out.with_suffix(".md").read_text()
