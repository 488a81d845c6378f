"""The candidate stage's quality on trained ML-100K runs: whole catalog against the stage.

For each training run given (a folder `python -m model_export train` wrote), export a bundle (with
the item vectors the stage searches) and rank every recorded test case both ways through ONNX
Runtime (`model_export evaluate --retrieve`): new- and old-user NDCG@10, the stage's recall of the
whole catalog's top 100, and how many rows the ranker scored. The issue-16 target: new-user NDCG@10
within 1% of whole-catalog scoring.

With `--reveal 1 3 5 10`, the same for test new users with their first n interactions known
(`evaluate --reveal`, strict protocol): those the cold checkpoint still scores take the prior's
rows (`--prior-clicked`, MAILREC_RETRIEVE_PRIOR_CLICKED), the others the search.

    python -m benchmarks.candidate_quality --data-dir ../shared/data \\
        --runs .cache/quantization/runs/control-s0 .cache/quantization/runs/mail-s0 ...

Results: benchmarks/results/candidate-quality.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.command import command_line
from service.candidates import DEFAULTS
from service.contract import MANIFEST

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET = 0.01  # new-user NDCG@10 within 1% of whole-catalog scoring


def _evaluate(bundle: Path, data_dir: Path, options: dict[str, int], reveal: int = 0) -> dict[str, Any]:
    """`model_export evaluate --retrieve` on `bundle` with the stage's `options`."""
    out = bundle.with_name(f"{bundle.name}-{reveal}.json")
    cmd = [sys.executable, "-m", "model_export", "evaluate", "--bundle", str(bundle)]
    cmd += ["--data-dir", str(data_dir), "--reveal", str(reveal), "--quiet", "--json", str(out)]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _figures(whole: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    return {
        "whole_ndcg@10": whole["ndcg@10"],
        "stage_ndcg@10": stage["ndcg@10"],
        "relative": stage["ndcg@10"] / whole["ndcg@10"] - 1,
        "recall_of_top100": stage["recall_of_top100"],
        "rows_ranked": stage["candidates"],
        "users": stage["users"],
    }


def measure(
    run: Path, data_dir: Path, work: Path, options: dict[str, int], reveal: list[int]
) -> dict[str, Any]:
    bundle = work / run.name
    subprocess.run(
        [sys.executable, "-m", "model_export", "export", "--run", str(run), "--out", str(bundle)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    result = _evaluate(bundle, data_dir, options)
    cold = json.loads((bundle / MANIFEST).read_text()).get("cold_checkpoint")
    row: dict[str, Any] = {
        "cold_clicks": cold["clicks"] if cold else None,  # it scores new users with fewer clicks
        "run": run.name,
        "model": json.loads((run / "config.json").read_text()).get("model"),
        "epochs": len(json.loads((run / "metrics.json").read_text()).get("epochs", [])),  # trained
    }
    for who in ("new", "old"):
        row[who] = _figures(result["ranking"][who], result["retrieval"][who])
    if reveal:
        row["revealed"] = {}
        for n in reveal:
            known = _evaluate(bundle, data_dir, options, n)
            row["revealed"][str(n)] = _figures(known["ranking"]["new"], known["retrieval"]["new"])
            print(f"  {run.name}, {n} known: {row['revealed'][str(n)]['relative']:+.3%}", flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    o = result["options"]
    lines = [
        "# The candidate stage on trained ML-100K runs",
        "",
        f"Command: `{result['command']}` ({result['date']}, load average at start {result['loadavg']}).",
        "",
        f"Each run exported with the item vectors and every recorded test case ranked twice through ONNX "
        f"Runtime (`model_export evaluate --retrieve {o['retrieve']} --probes {o['probes']} --popular "
        f"{o['popular']}"
        + (f" --prior {o['prior']}" if "prior" in o else "")
        + (f" --prior-clicked {o['prior_clicked']}" if "prior_clicked" in o else "")
        + "`, the service's defaults): the whole catalog (1,682 items), and the candidate stage (the "
        "ranker on the stage's rows only"
        + (
            "; a new user scored by the cold checkpoint: the prior's first rows, without the service's k"
            if o.get("prior")
            else ""
        )
        + "). Target (issue 16): new-user NDCG@10 within 1% of whole-catalog scoring.",
        "",
        "| run | epochs | new NDCG@10 whole | with the stage | relative | recall of top 100 (new) "
        "| old NDCG@10 whole | with the stage | relative | rows ranked (new / old) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        n, d = r["new"], r["old"]
        lines.append(
            f"| {r['run']} | {r.get('epochs', '?')} | {n['whole_ndcg@10']:.4f} | {n['stage_ndcg@10']:.4f} "
            f"| {n['relative']:+.3%} "
            f"| {n['recall_of_top100']:.4f} | {d['whole_ndcg@10']:.4f} | {d['stage_ndcg@10']:.4f} "
            f"| {d['relative']:+.3%} | {n['rows_ranked']:.0f} / {d['rows_ranked']:.0f} |"
        )
    worst = min(r["new"]["relative"] for r in result["runs"])
    gap = max(
        abs(r[w]["stage_ndcg@10"] - r[w]["whole_ndcg@10"]) for r in result["runs"] for w in ("new", "old")
    )
    met = all(abs(r["new"]["relative"]) <= TARGET for r in result["runs"])
    lines += [
        "",
        f"Largest new-user NDCG@10 loss: {worst:+.3%}; target {'met' if met else 'NOT met'} on every run "
        f"({len(result['runs'])} runs). Largest absolute NDCG@10 difference, new or old users: {gap:.2e}.",
    ]
    if any("revealed" in r for r in result["runs"]):
        lines += _revealed(result)
    return "\n".join(lines) + "\n"


def _revealed(result: dict[str, Any]) -> list[str]:
    o = result["options"]
    lines = [
        "",
        "## New users with their first clicks known",
        "",
        "The test new users again, each with their first n interactions known (`evaluate --reveal n`: "
        "the offline benchmark's few-shot regime; they are the user's clicks, left out of both rankings "
        "and of the positives; users with no positive left are dropped). "
        + (
            f"A user the cold checkpoint still scores (fewer clicks than its `clicks`) takes the "
            f"prior's first {o['prior_clicked']} rows plus the clicks (`--prior-clicked`, the "
            f"service's MAILREC_RETRIEVE_PRIOR_CLICKED), the others the search."
            if o["prior_clicked"]
            else "Every one of them goes through the search (`--prior-clicked 0`, as the service "
            "with MAILREC_RETRIEVE_PRIOR_CLICKED=0)."
        ),
        "",
        "| run | clicks known | stage | users | NDCG@10 whole | with the stage | relative "
        "| recall of top 100 | rows ranked |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        for n, f in r.get("revealed", {}).items():
            cold = r.get("cold_clicks")
            prior = cold is not None and int(n) < cold and o["prior_clicked"] > 0
            lines.append(
                f"| {r['run']} | {n} | {'prior' if prior else 'search'} | {f['users']} "
                f"| {f['whole_ndcg@10']:.4f} | {f['stage_ndcg@10']:.4f} | {f['relative']:+.3%} "
                f"| {f['recall_of_top100']:.4f} | {f['rows_ranked']:.0f} |"
            )
    rel = [f["relative"] for r in result["runs"] for f in r.get("revealed", {}).values()]
    met = all(abs(x) <= TARGET for x in rel)
    lines += [
        "",
        f"Largest NDCG@10 change with clicks known: {max(rel, key=abs):+.3%}; "
        f"within 1% {'on every row' if met else 'NOT on every row'}.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--runs", type=Path, nargs="+", default=[], help="training run folders")
    parser.add_argument("--retrieve", type=int, default=DEFAULTS.candidates)
    parser.add_argument("--probes", type=int, default=DEFAULTS.probes)
    parser.add_argument("--popular", type=int, default=DEFAULTS.popular)
    parser.add_argument("--prior", type=int, default=DEFAULTS.prior, help="0: new users through the search")
    parser.add_argument(
        "--prior-clicked",
        type=int,
        default=DEFAULTS.prior_clicked,
        help="the same for new users with clicks the cold checkpoint scores; 0: the search",
    )
    parser.add_argument(
        "--reveal",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also test new users with their first N interactions known (strict protocol), e.g. 1 3 5 10",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "candidate-quality")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.report_only:
        args.out.with_suffix(".md").write_text(
            markdown(json.loads(args.out.with_suffix(".json").read_text()))
        )
        return 0
    if not args.runs:
        parser.error("--runs: at least one training run folder")
    if args.data_dir is None:
        parser.error("set MAILREC_DATA_DIR or --data-dir (the folder holding ml-100k/)")
    command = command_line("benchmarks.candidate_quality", argv)
    loadavg = [round(x, 2) for x in os.getloadavg()]
    options = {
        "retrieve": args.retrieve,
        "probes": args.probes,
        "popular": args.popular,
        "prior": args.prior,
        "prior_clicked": args.prior_clicked,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="mailrec-candidates-") as tmp:
        for run in args.runs:
            row = measure(run, args.data_dir, Path(tmp), options, args.reveal)
            new, old = row["new"], row["old"]
            print(
                f"{row['run']}: new NDCG@10 {new['whole_ndcg@10']:.4f} -> {new['stage_ndcg@10']:.4f} "
                f"({new['relative']:+.3%}), old {old['relative']:+.3%}",
                flush=True,
            )
            rows.append(row)
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": loadavg,
        "options": options,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
