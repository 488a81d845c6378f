"""The GPU check: one line and exit 0 without CUDA; its CPU dry run measures and reports every part."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.gpu_check import CONCURRENCY, main, no_cuda_reason
from tests.conftest import REPO


def test_without_cuda_one_line_and_exit_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if no_cuda_reason() is None:
        pytest.skip("this machine's onnxruntime lists CUDA")
    assert main(["--out", str(tmp_path / "gpu.md")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA here (onnxruntime ")
    assert "CPUExecutionProvider" in lines[0] and "nothing written" in lines[0]
    assert not (tmp_path / "gpu.md").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_check_without_a_gpu_is_one_line() -> None:
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("nvidia-smi is installed here: make gpu-check would run the check")
    done = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu-check: no NVIDIA GPU here (nvidia-smi finds none): nothing measured, nothing written"
    ]


def test_cpu_dry_run_reports_every_part(
    tiny_bundle: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tiny_bundle("mail", "base")
    out = tmp_path / "gpu.md"
    assert main(["--device", "cpu", "--bundle", str(bundle), "--quick", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    setup = result["setup"]
    assert setup["device"] == "cpu" and setup["wheels"] == ["onnxruntime"]
    assert set(setup["placement"]) == {"zero_shot", "ranker", "ranker_batch", "ranker_no_history"}
    for graph, placed in setup["placement"].items():
        assert setup["sessions"][graph] == ["CPUExecutionProvider"]
        assert placed["nodes"] > 0 and placed["not_on_provider"] == []
    # CPU against CPU: the same sessions' arithmetic, so exactly equal, every graph compared
    (parity,) = result["parity"].values()
    assert parity["requests"] == 20
    assert parity["zero_shot"] == parity["ranker"] == parity["ranker_batch"] == parity["golden"] == 0.0
    calls = [row["call"] for row in result["latency"]["device"]]
    assert calls == ["zero_shot", "ranker, 1 candidate", "ranker, 100 candidates", "ranker, 300 candidates"]
    for row in result["latency"]["device"] + result["latency"]["cpu"]:
        for how in ("direct", "device_thread"):
            assert 0 < row[how]["p50_us"] <= row[how]["p99_us"]
    load = {(r["path"], r["concurrency"]): r for r in result["load"]}
    paths = ("device, micro-batched", "device, device thread", "cpu, inline")
    assert set(load) == {(p, c) for p in paths for c in CONCURRENCY}
    assert all(r["req_per_s"] > 0 and r["requests"] >= 64 for r in load.values())
    batched = [load[("device, micro-batched", c)]["rows_per_call"] for c in CONCURRENCY]
    assert batched[0] == 100 and max(batched) > 100  # one caller: one request a call; more: merged
    text = out.read_text()
    assert "a dry run" in text and "| ranker_batch | CPUExecutionProvider |" in text
    assert capsys.readouterr().out.count(" req/s  p99 ") == 3 * len(CONCURRENCY)  # progress lines
