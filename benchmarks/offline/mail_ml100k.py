"""Issue #2's experiment: control, MAIL and oracle on MovieLens 100K, both protocols, both rankers.

    python -m benchmarks.offline.mail_ml100k [--seeds 0 1 2] [--data-dir DIR] [--jobs 2]
        [--protocols mail strict] [--rankers base din] [--out benchmarks/results/mail-ml100k]

Writes OUT.{jsonl,json,md} (the wall time of the invocation in the json). Rerunning resumes:
finished cells are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from benchmarks.offline.report import markdown, summarize
from benchmarks.offline.runner import Cell, Grid, load_rows, machine, run_grid

RESULTS = Path(__file__).resolve().parent.parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--protocols", nargs="+", default=["mail", "strict"], choices=["mail", "strict"])
    parser.add_argument("--rankers", nargs="+", default=["base", "din"], choices=["base", "din"])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one torch thread each")
    parser.add_argument("--out", type=Path, default=RESULTS / "mail-ml100k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cells = [
        Cell("ml-100k", protocol, ranker, method, seed)
        for protocol in args.protocols
        for ranker in args.rankers
        for seed in args.seeds
        for method in ("control", "mail", "oracle")
    ]
    rows_path = args.out.with_suffix(".jsonl")
    wall = run_grid(Grid(cells, train={"task": "rating"}), args.data_dir, rows_path, jobs=args.jobs)
    rows = load_rows(rows_path, cells)
    base_mail = [r for r in rows if r["cell"]["protocol"] == "mail" and r["cell"]["ranker"] == "base"]
    summary = summarize(rows)
    result = {
        "command": "python -m benchmarks.offline.mail_ml100k " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "behavior": "clicks",
        "wall_seconds_this_invocation": round(wall, 1),
        "basednn_mail_protocol_9_runs_seconds": round(sum(r["seconds"] for r in base_mail), 1),
        "summary": summary,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = [
        "# MAIL on MovieLens 100K: control vs MAIL vs oracle",
        "",
        f"Command: `{result['command']}` ({result['date']}, {machine()['cores']} cores).",
        f"Seeds {args.seeds}; mean ± std over seeds; lift = paired relative lift over control; "
        "p = paired t-test across seeds; gap closed = (MAIL - control) / (oracle - control) of the "
        "seed means.",
        f"BaseDNN, MAIL protocol, 3 models x {len(args.seeds)} seeds: "
        f"{result['basednn_mail_protocol_9_runs_seconds']:.0f} s of training and evaluation.",
        "",
        "## AUC",
        "",
        markdown(summary, "auc"),
        "",
        "## GAUC",
        "",
        markdown(summary, "gauc"),
        "",
        "## Can attributes predict behavior? (R^2 of virtual vs real behavior, new users, test)",
        "",
        "| protocol | ranker | R^2 mean ± std |",
        "|---|---|---|",
    ]
    for r in summary:
        if r["method"] == "mail" and r["virtual_r2_new"]:
            m, s = r["virtual_r2_new"]
            text.append(f"| {r['protocol']} | {r['ranker']} | {m:.4f} ± {s:.4f} |")
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
