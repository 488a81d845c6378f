"""What the ranking tower's width costs per call (issue 16): the ranker call in-process.

    python -m benchmarks.ranker_width --data-dir DIR [--widths 256,128 256 128 128,64] [--rounds 15]

For each width (`model_export train --hidden`), trains `mail` for one epoch on MovieLens 100K with
the product's other settings (the graph's cost does not depend on how well it is trained), exports
it, and times the service's ranker call (`Towers.score`) for 100 random candidates and for the
whole catalog in one process, on one ONNX Runtime thread, the widths alternating round by round.
Per call: the median over rounds of each round's mean, and its ratio to the first width's (the
shipped tower's), measured in the same run. Which width serves is decided on validation
(`benchmarks.offline.task_choice`, catalog-task.md), not here. Runs and bundles go to
`.cache/ranker-width` (reused when there); writes benchmarks/results/ranker-width.md and .json.

    python -m benchmarks.ranker_width --data-dir DIR --no-history [--rounds 15]

times instead the first width's two graphs for a user with no behavior (that golden user with its
behavior emptied): `ranker.onnx` against `ranker_no_history.onnx`, each through `Towers.score` as
the service calls it (`SessionOptions.no_history_graph` off and on); writes ranker-no-history.md.

    python -m benchmarks.ranker_width --data-dir DIR --readings [--rounds 15]

times instead MAIL at the first width trained with each reading of the virtual behavior (`train
--virtual-attention shared`, the paper's, and `own`, the product's on BaseDNN since 2026-12-04:
columns of its own in the first layer), as the service calls the ranker (its defaults: a user with no
behavior through `ranker_no_history.onnx`) for a known user (the golden user) and a new one (its
behavior emptied), the readings alternating; writes ranker-reading.md (issue 12: serving cost
unchanged).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness.command import command_line
from benchmarks.offline.resumable import write
from benchmarks.offline.runner import machine

if TYPE_CHECKING:
    from service.contract import Encoded
    from service.inference import Towers

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "ranker-width"
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = ("256,128", "256", "128", "128,64")


READINGS = ("shared", "own")


def build(width: str, data_dir: str | None, reading: str | None = None) -> Path:
    """Train (one epoch) and export the tower of this width (MAIL's virtual behavior read as
    `reading`, else train's default); the bundle's directory."""
    name = width if reading is None else f"{width}-{reading}"
    run_dir, bundle = CACHE / "runs" / name, CACHE / "bundles" / name
    if (bundle / "manifest.json").exists():
        return bundle
    py = sys.executable
    train = [py, "-m", "model_export", "train", "--model", "mail", "--behavior", "clicks"]
    train += ["--epochs", "1", "--hidden", width, *(["--virtual-attention", reading] if reading else [])]
    train += ["--out", str(run_dir), "--quiet", *(["--data-dir", data_dir] if data_dir else [])]
    log.info("training width %s%s (one epoch)", width, f", {reading} reading" if reading else "")
    subprocess.run(train, check=True, cwd=ROOT)
    export = [py, "-m", "model_export", "export", "--run", str(run_dir), "--out", str(bundle)]
    subprocess.run(export, check=True, cwd=ROOT)
    return bundle


def speed(bundles: dict[str, Path], rounds: int) -> list[dict[str, Any]]:
    """Per width and candidate count: microseconds per ranker call, median over rounds."""
    from service.contract import load_bundle
    from service.inference import SessionOptions, Towers

    loaded = {w: load_bundle(b) for w, b in bundles.items()}
    towers = {w: Towers(b, SessionOptions(device="cpu", microbatch="off")) for w, b in loaded.items()}
    case = next(iter(loaded.values())).manifest.golden[0]  # a real test user, the same for every width
    return time_calls(towers, case.encoded, case.gate, rounds)


def no_history_speed(bundle_dir: Path, rounds: int) -> list[dict[str, Any]]:
    """A user with no behavior through ranker.onnx, then ranker_no_history.onnx: `speed`'s table."""
    from dataclasses import replace

    import numpy as np

    from service.contract import load_bundle
    from service.inference import SessionOptions, Towers

    bundle = load_bundle(bundle_dir)
    if bundle.ranker_no_history_path is None:
        raise SystemExit(f"{bundle_dir} has no ranker_no_history.onnx (a DIN tower, or exported before it)")
    towers = {
        graph: Towers(bundle, SessionOptions(device="cpu", microbatch="off", no_history_graph=on))
        for graph, on in (("ranker.onnx", False), ("ranker_no_history.onnx", True))
    }
    case = bundle.manifest.golden[0]
    cold = replace(case.encoded, behavior=np.zeros_like(case.encoded.behavior), n_history=0)
    return time_calls(towers, cold, case.gate, rounds)


def reading_speed(bundles: dict[str, Path], rounds: int) -> list[dict[str, Any]]:
    """Each bundle's ranker call as the service makes it, for the golden user as known (its
    behavior) and as new (behavior emptied): `time_calls`'s rows, each with its `user`."""
    from dataclasses import replace

    import numpy as np

    from service.contract import load_bundle
    from service.inference import SessionOptions, Towers

    loaded = {r: load_bundle(b) for r, b in bundles.items()}
    towers = {r: Towers(b, SessionOptions(device="cpu", microbatch="off")) for r, b in loaded.items()}
    case = next(iter(loaded.values())).manifest.golden[0]
    if case.encoded.n_history == 0:
        raise SystemExit("the golden user has no behavior: nothing to time as a known user")
    cold = replace(case.encoded, behavior=np.zeros_like(case.encoded.behavior), n_history=0)
    rows = []
    for user, encoded in (("known", case.encoded), ("new", cold)):
        rows += [{"user": user, **c} for c in time_calls(towers, encoded, case.gate, rounds)]
    return rows


def time_calls(towers: dict[str, Towers], encoded: Encoded, gate: float, rounds: int) -> list[dict[str, Any]]:
    """`Towers.score` of each of `towers` for one user, 100 random candidates and the whole
    catalog, alternating round by round: per candidate count, microseconds per call (wall and CPU),
    the median over rounds, and the ratio to the first of `towers`."""
    import numpy as np

    n = len(next(iter(towers.values())).bundle.catalog)
    rng = np.random.default_rng(0)
    cases = []
    for size, calls in ((100, 400), (n, 40)):
        cands = rng.choice(np.arange(1, n + 1), size, replace=False) if size < n else np.arange(1, n + 1)
        cands = cands.astype(np.int64)
        wall: dict[str, list[float]] = {w: [] for w in towers}
        cpu: dict[str, list[float]] = {w: [] for w in towers}
        for _ in range(rounds):
            for width, t in towers.items():
                virtual = t.virtual_behavior(encoded.user_attrs)
                t.score(encoded, virtual, gate, cands)  # warm for this size
                began, began_cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    t.score(encoded, virtual, gate, cands)
                wall[width].append((time.perf_counter() - began) / calls * 1e6)
                cpu[width].append((time.process_time() - began_cpu) / calls * 1e6)
        us = {w: float(np.median(r)) for w, r in wall.items()}
        cpu_us = {w: float(np.median(r)) for w, r in cpu.items()}
        ref, ref_cpu = us[next(iter(us))], cpu_us[next(iter(us))]
        cases.append(
            {
                "candidates": int(size),
                "calls_per_round": calls,
                "us": us,
                "ratio_to_first": {w: u / ref for w, u in us.items()},
                "cpu_us": cpu_us,
                "cpu_ratio_to_first": {w: u / ref_cpu for w, u in cpu_us.items()},
                "rounds_us": wall,
                "rounds_cpu_us": cpu,
            }
        )
        log.info("%d candidates: %s", size, ", ".join(f"{w}: {u:.1f} us" for w, u in cpu_us.items()))
    return cases


def markdown(result: dict[str, Any]) -> str:
    widths = list(result["widths"])
    timing = (
        f"{result['rounds']} rounds; per call, the median of the rounds' means, CPU time of the "
        "process (wall time in brackets: on a loaded host it counts the time the process waited for "
        "a core); x = against the first column in the same run."
    )
    by_user = bool(result.get("readings"))  # rows per user (known, new) and candidate count
    if by_user:
        title = "# MAIL's readings of the virtual behavior: cost of the ranker call"
        what = (
            "The service's ranker call (`Towers.score`, one ONNX Runtime thread, fp32, the service's "
            f"defaults) of a one-epoch `mail` tower ({widths[0]}) trained with each reading "
            "(`train --virtual-attention`), for the golden user as known (its behavior) and as new "
            "(behavior emptied: `ranker_no_history.onnx`), the readings alternating, "
        )
        header = [f"`{r}`" for r in result["readings"]]
        columns = list(result["readings"])
    elif result.get("graphs"):
        title = "# A user with no behavior: ranker.onnx against ranker_no_history.onnx"
        what = (
            "The service's ranker call (`Towers.score`, one ONNX Runtime thread, fp32) of the first "
            f"width's one-epoch `mail` tower ({widths[0]}) for a golden user with its behavior emptied, "
            "through each graph (`SessionOptions.no_history_graph` off, on), alternating, "
        )
        header = [f"`{g}`" for g in result["graphs"]]
        columns = list(result["graphs"])
    else:
        title = "# The ranking tower's width: cost of the ranker call"
        what = (
            "The service's ranker call (`Towers.score`, one ONNX Runtime thread, fp32) of a one-epoch "
            "`mail` tower of each width, the widths alternating, "
        )
        timing += " Which width the product trains is chosen on validation (catalog-task.md), not here."
        header = [f"hidden {w}" for w in widths]
        columns = widths
    lines = [
        title,
        "",
        f"`{result['command']}` on {result['date']} ({result['machine']['cores']} cores; load average "
        f"{result['loadavg_at_start']} at the start, {result['loadavg_at_end']} at the end). "
        + what
        + timing,
        "",
        "| " + ("user | " if by_user else "") + "candidates | " + " | ".join(header) + " |",
        "|---|" + ("---|" if by_user else "") + "---:|" * len(columns),
    ]
    for case in result["cases"]:
        cells = [
            f"{case['cpu_us'][c]:.1f} us (x{case['cpu_ratio_to_first'][c]:.2f}) [{case['us'][c]:.0f}]"
            for c in columns
        ]
        user = f"{case['user']} | " if by_user else ""
        lines.append(f"| {user}{case['candidates']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS), help="the first is the reference")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="time the first width's ranker.onnx against ranker_no_history.onnx for a user with no "
        "behavior, instead of the widths",
    )
    parser.add_argument(
        "--readings",
        action="store_true",
        help="time MAIL at the first width trained with each reading of the virtual behavior "
        "(shared, own), for a known and a new user, instead of the widths",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/ranker-width(-no-history, -reading)"
    )
    args = parser.parse_args(argv)
    if args.no_history and args.readings:
        parser.error("--no-history and --readings are two different comparisons: give one")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    widths = args.widths[:1] if args.no_history or args.readings else args.widths
    if args.readings:
        bundles = {r: build(widths[0], args.data_dir, r) for r in READINGS}
    else:
        bundles = {w: build(w, args.data_dir) for w in widths}
    started = [round(x, 2) for x in os.getloadavg()]
    if args.readings:
        cases = reading_speed(bundles, args.rounds)
    elif args.no_history:
        cases = no_history_speed(bundles[widths[0]], args.rounds)
    else:
        cases = speed(bundles, args.rounds)
    result = {
        "command": command_line("benchmarks.ranker_width", argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "widths": widths,
        "graphs": list(cases[0]["us"]) if args.no_history else None,
        "readings": list(READINGS) if args.readings else None,
        "rounds": args.rounds,
        "loadavg_at_start": started,
        "cases": cases,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    if args.out is None:
        name = (
            "ranker-no-history" if args.no_history else "ranker-reading" if args.readings else "ranker-width"
        )
        args.out = RESULTS / name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    write(args.out, result, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
