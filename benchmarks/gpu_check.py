"""GPU check: the service's CUDA path against its CPU path, on one bundle, in one run.

    make gpu-check          # on an NVIDIA machine; elsewhere one line, exit 0
    python -m benchmarks.gpu_check [--bundle DIR] [--device cuda|cpu] [--out FILE] [--quick]
    python -m benchmarks.gpu_check --build-bundle DIR   # only train and export the bundle

What it reports, the device (CUDA) next to the CPU, each through the service's own code
(`service.inference.Towers`, `service.batching.MicroBatcher`, the registry's device thread):
- setup: onnxruntime and its wheels, the providers each session really got, the CUDA options in
  effect as ONNX Runtime reads them back, and node placement (every node that ran, by provider);
- parity: max |score difference| between device and CPU on a fixed request set (seeded: users,
  histories, gates, 1 to all candidates), for the zero-shot vectors, the ranker and the batched
  ranker; with TF32 off (the service) and on (what turning it on would cost), and the golden check;
- latency of one request's tower calls for 1, 100 and all catalog candidates, called directly and
  through the device thread (what a thread hop costs on each provider);
- the micro-batcher: throughput and p50/p99 against 1 to 256 in-process callers (100 candidates
  each), next to the same callers on the CPU path (inline, the service's CPU default) and on the
  device without batching. Each caller sends its next request as soon as its last one is answered,
  and a request's latency counts its wait for the event loop (so an inline call's queue shows).

Without CUDA (onnxruntime lists no CUDA provider, or a session does not get it) it prints one line
and exits 0. `--device cpu` runs the same code with the CPU standing in for the device: a dry run
of the script (the test suite runs it), not a GPU figure; it writes only where --out says.
Without --bundle it trains and exports a small mail bundle (one epoch on MovieLens 100K when
MAILREC_DATA_DIR has it, else the synthetic set) under .cache/gpu-check/, which needs torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / ".cache" / "gpu-check"
CONCURRENCY = (1, 4, 16, 64, 256)
LOAD_CANDIDATES = 100

Call = tuple[Any, Any, float, Any]  # (Encoded, virtual or None, gate, candidate rows): Towers.score's


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the CUDA provider, or None if onnxruntime lists it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    from service.inference import CUDA, runtime_wheels

    if CUDA in ort.get_available_providers():
        return None
    return (
        f"onnxruntime {ort.__version__} ({', '.join(runtime_wheels())}) lists {ort.get_available_providers()}"
    )


def data_dir() -> Path | None:
    raw = os.environ.get("MAILREC_DATA_DIR")
    path = Path(raw) if raw else REPO.parent / "shared" / "data"
    return path if (path / "ml-100k").is_dir() else None


def build_bundle(out: Path) -> Path:
    """A mail bundle at `out` (kept if valid): one epoch of training, then export."""
    from service.contract import ContractError, load_bundle

    try:
        load_bundle(out)
        return out
    except ContractError:
        pass
    data = data_dir()
    dataset = ["--dataset", "ml-100k", "--data-dir", str(data)] if data else ["--dataset", "synthetic"]
    run_dir = out.parent / f"{out.name}-run"
    train = [sys.executable, "-m", "model_export", "train", *dataset, "--protocol", "strict"]
    train += ["--model", "mail", "--epochs", "1", "--seed", "0", "--out", str(run_dir), "--quiet"]
    print(f"gpu-check: training a bundle ({dataset[1]}, 1 epoch) into {out}", flush=True)
    subprocess.run(train, check=True, cwd=REPO)
    export = [sys.executable, "-m", "model_export", "export", "--run", str(run_dir), "--out", str(out)]
    subprocess.run(export, check=True, cwd=REPO)
    return out


def request_set(towers: Any, n: int, seed: int = 0) -> list[Call]:
    """n fixed requests: random attribute and context ids (PAD and OOV included), histories of 0 to
    3 behavior lengths, gates 1, 0 and 0.5, candidate lists of 1, 100, all, and odd sizes."""
    from service.contract import Encoded

    bundle = towers.bundle
    schema = bundle.schema
    items = len(bundle.catalog)
    rng = np.random.default_rng(seed)

    def ids(fields: Any) -> Any:
        return np.array([[rng.integers(0, f.cardinality) for f in fields for _ in range(f.slots)]], np.int64)

    calls: list[Call] = []
    for i in range(n):
        cold = Encoded(
            ids(schema.user_fields),
            ids(schema.context_fields),
            np.zeros((1, schema.behavior_len), np.int64),
            0,
        )
        length = int(rng.integers(0, 3 * schema.behavior_len)) if i % 2 else 0
        enc = cold.with_history(rng.integers(1, items + 1, length).astype(np.int64)) if length else cold
        gate = (1.0, 0.0, 0.5)[i % 3]
        virtual = (
            towers.virtual_behavior(enc.user_attrs) if gate > 0 and towers.zero_shot is not None else None
        )
        size = (1, LOAD_CANDIDATES, items, 37, 5)[i % 5]
        rows = rng.choice(np.arange(1, items + 1, dtype=np.int64), size, replace=False)
        calls.append((enc, virtual, gate, rows))
    return calls


def parity(device: Any, cpu: Any, calls: list[Call]) -> dict[str, Any]:
    """Max |device - cpu| over the request set; the CPU's virtual vectors feed both rankers."""
    out: dict[str, Any] = {"requests": len(calls)}
    if cpu.zero_shot is not None:
        diffs = [
            np.abs(device.virtual_behavior(c[0].user_attrs) - cpu.virtual_behavior(c[0].user_attrs)).max()
            for c in calls
        ]
        out["zero_shot"] = float(max(diffs))
    out["ranker"] = float(max(np.abs(device.score(*c) - cpu.score(*c)).max() for c in calls))
    if device.ranker_batch is not None:
        worst = 0.0
        for start in range(0, len(calls), 8):
            chunk = calls[start : start + 8]
            for got, c in zip(device.score_many(chunk), chunk, strict=True):
                worst = max(worst, float(np.abs(got - cpu.score(*c)).max()))
        out["ranker_batch"] = worst
    return out


def golden_diff(towers: Any) -> float:
    """The largest difference from the bundle's golden scores (the load check's tolerance: 1e-5)."""
    worst = 0.0
    for case in towers.bundle.manifest.golden:
        call = (case.encoded, towers.virtual_behavior(case.encoded.user_attrs), case.gate, case.candidates)
        worst = max(worst, float(np.abs(towers.score(*call) - case.scores).max()))
    return worst


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
    }


def _timed(fn: Callable[[], Any], reps: int, warm: int = 10) -> list[float]:
    for _ in range(warm):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _hop(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
    return loop.run_until_complete(loop.run_in_executor(executor, fn))


def latency(towers: Any, calls: list[Call], reps: int, executor: ThreadPoolExecutor) -> list[dict[str, Any]]:
    """One request's tower calls, directly and through the device thread, per candidate count."""
    items = len(towers.bundle.catalog)
    enc, virtual, gate, _ = next(c for c in calls if c[1] is not None or towers.zero_shot is None)
    rows: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    try:
        tasks: dict[str, Callable[[], Any]] = {}
        if towers.zero_shot is not None:
            tasks["zero_shot"] = partial(towers.virtual_behavior, enc.user_attrs)
        for n in (1, LOAD_CANDIDATES, items):
            rows_n = np.arange(1, n + 1, dtype=np.int64)
            tasks[f"ranker, {n} candidate{'s' if n > 1 else ''}"] = partial(
                towers.score, enc, virtual, gate, rows_n
            )
        for name, fn in tasks.items():
            direct = _quantiles(_timed(fn, reps))
            hop = _quantiles(_timed(partial(_hop, loop, executor, fn), reps))
            rows.append({"call": name, "direct": direct, "device_thread": hop})
    finally:
        loop.close()
    return rows


async def _callers(score: Score, calls: list[Call], concurrency: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < total:
            call = calls[issued % len(calls)]
            issued += 1
            start = time.perf_counter()
            await asyncio.sleep(0)  # the request arrives and waits its turn on the event loop
            await score(call)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "req_per_s": round(len(latencies) / wall), **_quantiles(latencies)}


Score = Callable[[Call], Awaitable[Any]]


def _batched(batcher: Any) -> Score:
    async def score(c: Call) -> Any:
        return await batcher.score(*c)

    return score


def _threaded(towers: Any, executor: ThreadPoolExecutor) -> Score:
    async def score(c: Call) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, towers.score, *c)

    return score


def _inline(towers: Any) -> Score:
    async def score(c: Call) -> Any:
        return towers.score(*c)

    return score


def load(device: Any, cpu: Any, calls: list[Call], total: int) -> list[dict[str, Any]]:
    """Throughput and latency against in-process callers: the device micro-batched (the service on
    CUDA), the device one call per request on the device thread, and the CPU inline."""
    from service.batching import MicroBatcher
    from service.config import Settings

    wait_ms = Settings.model_fields["microbatch_wait_ms"].default
    max_rows = Settings.model_fields["microbatch_max_rows"].default
    fixed = [c for c in calls if len(c[3]) == LOAD_CANDIDATES]
    rows: list[dict[str, Any]] = []
    for concurrency in CONCURRENCY:
        n = max(total, 4 * concurrency)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-check-device") as executor:
            batcher = MicroBatcher(device, wait_ms / 1000, max_rows, executor=executor)
            paths = {
                "device, micro-batched": _batched(batcher),
                "device, device thread": _threaded(device, executor),
                "cpu, inline": _inline(cpu),
            }
            for path, score in paths.items():
                before = batcher.calls
                row = asyncio.run(_callers(score, fixed, concurrency, n))
                row.update(path=path, concurrency=concurrency)
                if batcher.calls > before:
                    row["rows_per_call"] = round(n * LOAD_CANDIDATES / (batcher.calls - before))
                rows.append(row)
                print(
                    f"  {path:>22} x{concurrency:<3} {row['req_per_s']:>7} req/s  p99 {row['p99_us']:>9} us",
                    flush=True,
                )
    return rows


def setup(device: Any, name: str, bundle: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from service.inference import runtime_wheels

    gpu = None
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "device": name,
        "gpu": gpu,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "onnxruntime": ort.__version__,
        "wheels": runtime_wheels(),
        "available_providers": ort.get_available_providers(),
        "bundle": str(bundle),
        "model_version": device.bundle.version,
        "catalog_items": len(device.bundle.catalog),
        "sessions": {n: s.get_providers() for n, s in device.sessions().items()},
        "provider_options": device.provider_options(),
        "placement": {n: p.describe() for n, p in device.placement.items()},
    }


def _row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def report(result: dict[str, Any]) -> str:
    s = result["setup"]
    dry = " (a dry run: the CPU stands in for the GPU; no GPU figure here)" if s["device"] == "cpu" else ""
    lines = [
        "# GPU check: the CUDA path next to the CPU path",
        "",
        f"`{result['command']}`, {result['date']}. Device under test: **{s['device']}**{dry}.",
        "",
        f"- GPU: {s['gpu'] or 'none found by nvidia-smi'}; host {s['host']}",
        f"- onnxruntime {s['onnxruntime']} from {', '.join(s['wheels'])}; "
        f"lists {', '.join(s['available_providers'])}",
        f"- bundle {s['bundle']} ({s['model_version']}, {s['catalog_items']} items)",
        "",
        "## Providers and placement",
        "",
        _row(
            "graph", "session providers", "options in effect", "nodes", "not on the provider", "Memcpy nodes"
        ),
        _row(*["---"] * 6),
    ]
    for graph, placed in s["placement"].items():
        options = ", ".join(f"{k}={v}" for k, v in sorted(s["provider_options"][graph].items())) or "-"
        elsewhere = ", ".join(f"{n['node']} ({n['op']}, {n['provider']})" for n in placed["not_on_provider"])
        sessions = ", ".join(s["sessions"][graph])
        lines.append(
            _row(graph, sessions, options, placed["nodes"], elsewhere or "none", placed["memcpy_nodes"])
        )
    lines += ["", "## Parity with the CPU (max absolute difference)", ""]
    lines += [
        _row("device setting", "requests", "zero-shot vectors", "ranker scores", "batched ranker", "golden")
    ]
    lines += [_row(*["---"] * 6)]
    for name, p in result["parity"].items():
        cells = (p["requests"], p.get("zero_shot", "-"), p["ranker"], p.get("ranker_batch", "-"), p["golden"])
        lines.append(_row(name, *cells))
    lines += ["", "The service checks the golden scores at load with atol 1e-5.", ""]
    lines += ["## One request's tower calls (us, p50 / p99)", ""]
    lines += [_row("call", "device, direct", "device, via a thread", "cpu, direct", "cpu, via a thread")]
    lines += [_row(*["---"] * 5)]
    for dev, cpu in zip(result["latency"]["device"], result["latency"]["cpu"], strict=True):
        timings = [
            f"{r[k]['p50_us']} / {r[k]['p99_us']}" for r in (dev, cpu) for k in ("direct", "device_thread")
        ]
        lines.append(_row(dev["call"], *timings))
    lines += ["", f"## Against concurrent callers ({LOAD_CANDIDATES} candidates each, in-process)", ""]
    lines += [_row("callers", "path", "req/s", "p50 us", "p99 us", "rows per ONNX call"), _row(*["---"] * 6)]
    for r in result["load"]:
        figures = (r["req_per_s"], r["p50_us"], r["p99_us"], r.get("rows_per_call", "-"))
        lines.append(_row(r["concurrency"], r["path"], *figures))
    return "\n".join(lines) + "\n"


def check(bundle: Path, device_name: str, quick: bool) -> dict[str, Any]:
    from service.contract import load_bundle
    from service.inference import SessionOptions, Towers

    loaded = load_bundle(bundle)
    device_opts = SessionOptions(device=device_name, microbatch="on")
    device = Towers(loaded, device_opts)
    cpu = Towers(loaded, SessionOptions(device="cpu", microbatch="on"))
    calls = request_set(cpu, 20 if quick else 120)
    result: dict[str, Any] = {"setup": setup(device, device_name, bundle), "parity": {}}
    result["parity"]["TF32 off (the service)"] = {**parity(device, cpu, calls), "golden": golden_diff(device)}
    if device_name == "cuda":
        tf32 = Towers(loaded, SessionOptions(device="cuda", microbatch="on", cuda_tf32=True))
        result["parity"]["TF32 on"] = {**parity(tf32, cpu, calls), "golden": golden_diff(tf32)}
        del tf32
    reps = 30 if quick else 300
    with ThreadPoolExecutor(max_workers=1) as executor:
        result["latency"] = {
            "device": latency(device, calls, reps, executor),
            "cpu": latency(cpu, calls, reps, executor),
        }
    print("gpu-check: micro-batcher against concurrent callers", flush=True)
    result["load"] = load(device, cpu, calls, 64 if quick else 2000)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle", type=Path, help="a mail bundle (default: build one under .cache/gpu-check)"
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of the script"
    )
    parser.add_argument("--out", type=Path, help="report path (default with cuda: benchmarks/results/gpu.md)")
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions: checks the script, not the GPU"
    )
    parser.add_argument(
        "--build-bundle", type=Path, metavar="DIR", help="only train and export a bundle at DIR"
    )
    args = parser.parse_args(argv)
    if args.build_bundle:
        build_bundle(args.build_bundle)
        return 0
    if args.device == "cuda":
        reason = no_cuda_reason()
        if reason is not None:
            print(f"gpu-check: no CUDA here ({reason}): nothing measured, nothing written")
            return 0
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels, where installed
            try:
                ort.preload_dlls()
            except Exception as exc:  # best effort: a CUDA image has them on the library path
                print(f"gpu-check: onnxruntime.preload_dlls(): {exc}", flush=True)
    bundle = args.bundle or build_bundle(CACHE / "bundle")
    from service.inference import DeviceUnavailable

    command = "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        result = check(bundle, args.device, args.quick)
    except DeviceUnavailable as exc:
        print(f"gpu-check: no CUDA here ({exc}): nothing measured, nothing written")
        return 0
    result["command"] = command.strip()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = report(result)
    print(text)
    out = args.out or (RESULTS / "gpu.md" if args.device == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"gpu-check: wrote {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
