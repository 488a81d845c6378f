"""Bundle size on disk and load time, stage by stage, against a bare onnxruntime session.

    python -m benchmarks.bundle_load BUNDLE_DIR [BUNDLE_DIR ...] [--repeats 7]

What the service does before a bundle serves (service.bundles.load_model): validate the bundle
(manifest, sha256 of every file, the manifest's ONNX signatures against the contract;
service.contract.load_bundle), create the ONNX Runtime sessions and check each against its
signature (service.inference.Towers), check the golden scores, warm up; for a bundle with a cold
checkpoint (`cold/`), its sessions, golden scores and warm-up too, as the service loads both.
The reference, measured in the same run: bare `onnxruntime.InferenceSession`s for the files the
service opens on a CPU (ranker.onnx, and zero_shot.onnx in a mail bundle, each also in cold/;
ranker_batch.onnx only serves the CUDA micro-batcher), default options, nothing validated.
Medians over --repeats fresh loads in this process (the first load, which also initialises
onnxruntime, is reported apart).
Writes benchmarks/results/bundle-load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness.command import command_line

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1e3, value


def measure(path: Path, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    from service.contract import load_bundle
    from service.inference import SessionOptions, Towers

    options = SessionOptions(device="cpu")
    dirs = (path, path / "cold")
    onnx_files = [f for d in dirs for f in (d / "ranker.onnx", d / "zero_shot.onnx") if f.exists()]

    def bare() -> None:
        for f in onnx_files:
            ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])

    stages: dict[str, list[float]] = {k: [] for k in ("validate", "sessions", "golden", "warm_up", "total")}
    reference: list[float] = []
    first: float | None = None
    for i in range(repeats + 1):
        t_validate, bundle = _timed(lambda: load_bundle(path))
        served = [b for b in (bundle, bundle.cold) if b is not None]
        t_sessions, towers = _timed(lambda: [Towers(b, options) for b in served])  # noqa: B023
        t_golden, _ = _timed(lambda: [t.check_golden() for t in towers])  # noqa: B023
        t_warm, _ = _timed(lambda: [t.warm_up() for t in towers])  # noqa: B023
        total = t_validate + t_sessions + t_golden + t_warm
        t_ref, _ = _timed(bare)
        if i == 0:
            first = total
            continue
        for key, value in zip(stages, (t_validate, t_sessions, t_golden, t_warm, total), strict=True):
            stages[key].append(value)
        reference.append(t_ref)
    sizes = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    median_total = statistics.median(stages["total"])
    median_ref = statistics.median(reference)
    return {
        "bundle": str(path),
        "model": bundle.model,
        "model_version": bundle.version,
        "cold_checkpoint": bundle.cold is not None,
        "bytes": sum(sizes.values()),
        "files": sizes,
        "first_load_ms": round(first or 0.0, 1),
        "median_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()},
        "bare_sessions_median_ms": round(median_ref, 2),
        "ratio_to_bare_sessions": round(median_total / median_ref, 2),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "bundle-load")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    rows = [measure(p, args.repeats) for p in args.bundles]
    result = {
        "command": command_line("benchmarks.bundle_load", argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "onnxruntime": ort.__version__,
        "bundles": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Bundle size and load time",
        "",
        f"Command: `{result['command']}` ({result['date']}, onnxruntime {result['onnxruntime']}, "
        f"python {result['machine']['python']}). Medians of {args.repeats} loads after a first one; "
        "reference = bare onnxruntime sessions for the .onnx files the service opens on a CPU, same run.",
        "",
        "| bundle | model | size | first load ms | validate | sessions | golden | warm-up | total ms "
        "| bare sessions ms | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median_ms"]
        lines.append(
            f"| {r['bundle']} | {r['model']} | {r['bytes'] / 1e6:.2f} MB | {r['first_load_ms']:.0f} "
            f"| {m['validate']:.1f} | {m['sessions']:.1f} | {m['golden']:.1f} | {m['warm_up']:.1f} "
            f"| {m['total']:.1f} | {r['bare_sessions_median_ms']:.1f} | {r['ratio_to_bare_sessions']:.2f} |"
        )
    lines += ["", "Files (bytes):", ""]
    for r in rows:
        lines.append(f"- {r['bundle']}: " + ", ".join(f"{k} {v:,}" for k, v in r["files"].items()))
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
