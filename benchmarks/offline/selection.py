"""Which validation users should early stopping read? All of them, or those the kept weights serve.

    python -m benchmarks.offline.selection --served S.jsonl --all A.jsonl [--out PREFIX]

With a cold checkpoint (the catalog task's default), the weights early stopping keeps score the
known users and the cold checkpoint scores the unseen ones; `select ndcg` still picks the kept
epoch on all validation users' NDCG@10, new users included, whose score peaks early and moves
against the known users' (catalog-epochs.md). `select ndcg-served` reads the known users alone.

S holds the offline benchmark's rows trained with `--select ndcg-served`, A rows of the same
cells with `--select ndcg` (the default), both from this machine: trained models differ in their
last digits between machines, so only rows of one machine are paired. Training does not depend on
the rule (the rule only reads validation after each epoch, and a run is deterministic under its
seed), so where the `ndcg` rule, replayed on an S row's own validation curves, stops within them
and keeps the same two epochs (the kept one and the cold checkpoint's), that S row *is* the `ndcg`
row and is taken for it ("replayed"); any other cell needs its A row (listed as missing until it
has one). `--check` names cells whose A row was trained although it replays: the two must agree.

Writes PREFIX.md and PREFIX.json: per tower and method, validation and test NDCG@10 of old and
new users under both rules, the relative change, a paired p over seeds, and MAIL against control
under each rule. Choices are read on validation; test is reported.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.command import command_line
from benchmarks.offline.report import paired_p

RESULTS = Path(__file__).resolve().parent.parent / "results"
METHODS = ("control", "mail")
GROUPS = ("old", "new")
TOL = 1e-5  # train's improvement threshold


def replay(score: list[float], new: list[float], patience: int, cap: int) -> tuple[int, int, int] | None:
    """`train`'s early stopping on a recorded curve: (epochs run, kept epoch, cold checkpoint's
    epoch) where the rule stops within the curve or the curve ran to the cap, else None."""
    best, kept, stale, new_best, cold = -math.inf, -1, 0, -math.inf, -1
    for i, (s, n) in enumerate(zip(score, new, strict=True)):
        epoch = i + 1
        if n > new_best + TOL:
            new_best, cold = n, epoch
        if s > best + TOL:
            best, kept, stale = s, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                return epoch, kept, cold
    return (len(score), kept, cold) if len(score) == cap else None


def _cell(row: dict[str, Any]) -> tuple[str, str, int]:
    c = row["cell"]
    return c["ranker"], c["method"], int(c["seed"])


def _load(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        c = row["cell"]
        if row.get("prefilled_skip") or c["method"] not in METHODS or c.get("onboarding_noise") is not None:
            continue
        if c["dataset"] == "ml-100k" and c["protocol"] == "strict":
            out[_cell(row)] = row
    return out


def pair(
    served: dict[tuple[str, str, int], dict[str, Any]],
    every: dict[tuple[str, str, int], dict[str, Any]],
    patience: int,
    cap: int,
) -> tuple[dict[tuple[str, str, int], tuple[dict[str, Any], str]], list[tuple[str, str, int]], list[str]]:
    """Per cell of S: the `ndcg` rule's row and where it came from ("trained" or "replayed");
    the cells still missing one; and disagreements between a trained row and its replay."""
    rows: dict[tuple[str, str, int], tuple[dict[str, Any], str]] = {}
    missing, disagree = [], []
    for cell, s in sorted(served.items()):
        epochs = s["losses"]
        if "val_ndcg_served" not in epochs[0]:
            raise SystemExit(f"{cell}: not trained with --select ndcg-served")
        own = replay(
            [e["val_ndcg_served"] for e in epochs], [e["val_ndcg_new"] for e in epochs], patience, cap
        )
        if own is None or own[0] != len(epochs) or own[1] != s["best_epoch"]:
            raise SystemExit(f"{cell}: the served rule's replay {own} does not match the row")
        old = replay([e["val_ndcg"] for e in epochs], [e["val_ndcg_new"] for e in epochs], patience, cap)
        same = old is not None and old[1:] == own[1:]
        if cell in every:
            rows[cell] = (every[cell], "trained")
            if same and _ranking(every[cell]) != _ranking(s):
                disagree.append(f"{cell}: replays to the served row's epochs {own[1:]}, trained row differs")
        elif same:
            rows[cell] = (s, "replayed")
        else:
            missing.append(cell)
    return rows, missing, disagree


def _ranking(row: dict[str, Any]) -> dict[str, Any]:
    return {part: row["ranking"][part] for part in ("val", "test")}


def _ndcg(row: dict[str, Any], part: str, group: str) -> float:
    return float(row["ranking"][part][group]["ndcg@10"])


def _rel(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a over mean of b minus 1 (%), and the paired p."""
    return 100 * (float(np.mean(a)) / float(np.mean(b)) - 1), paired_p(a, b)


def compare(
    served: dict[tuple[str, str, int], dict[str, Any]],
    paired: dict[tuple[str, str, int], tuple[dict[str, Any], str]],
) -> list[dict[str, Any]]:
    out = []
    for ranker in sorted({c[0] for c in paired}):
        seeds = {
            m: sorted(c[2] for c in paired if c[:2] == (ranker, m)) for m in METHODS
        }  # seeds with both rules
        for method in METHODS:
            ss = seeds[method]
            if not ss:
                continue
            rec: dict[str, Any] = {
                "ranker": ranker,
                "method": method,
                "seeds": ss,
                "kept": {
                    "ndcg": [paired[(ranker, method, s)][0]["best_epoch"] for s in ss],
                    "ndcg-served": [served[(ranker, method, s)]["best_epoch"] for s in ss],
                },
                "source": [paired[(ranker, method, s)][1] for s in ss],
            }
            for part in ("val", "test"):
                for group in GROUPS:
                    a = [_ndcg(served[(ranker, method, s)], part, group) for s in ss]
                    b = [_ndcg(paired[(ranker, method, s)][0], part, group) for s in ss]
                    lift, p = _rel(a, b)
                    rec[f"{part}_{group}"] = {"ndcg-served": a, "ndcg": b, "lift_pct": lift, "p": p}
            out.append(rec)
        both = sorted(set(seeds["control"]) & set(seeds["mail"]))
        if both:
            gap: dict[str, Any] = {"ranker": ranker, "method": "mail vs control", "seeds": both}
            for part in ("val", "test"):
                for group in GROUPS:
                    for rule, rows in (("ndcg-served", served), ("ndcg", {c: paired[c][0] for c in paired})):
                        a = [_ndcg(rows[(ranker, "mail", s)], part, group) for s in both]
                        b = [_ndcg(rows[(ranker, "control", s)], part, group) for s in both]
                        lift, p = _rel(a, b)
                        gap[f"{part}_{group}_{rule}"] = {"lift_pct": lift, "p": p}
            out.append(gap)
    return out


def markdown(records: list[dict[str, Any]], command: str, missing: list[Any], disagree: list[str]) -> str:
    lines = [
        "# Early stopping on the users the kept weights serve (`ndcg-served`) or on all users (`ndcg`)",
        "",
        f"`{command}`",
        "",
        "ML-100K, strict protocol (new users never trained on). Whole-catalog NDCG@10; lift = mean "
        "under `ndcg-served` over the mean under `ndcg`, minus 1; p: paired t-test over seeds. "
        "Old users are scored by the kept weights, new users by the cold checkpoint (whose epoch "
        "moves only where the rules stop at different epochs).",
        "",
        "| tower | method | seeds | kept epochs (ndcg -> served) | val old | val new | test old | test new |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if r["method"] == "mail vs control":
            continue
        kept = " ".join(f"{a}->{b}" for a, b in zip(r["kept"]["ndcg"], r["kept"]["ndcg-served"], strict=True))
        cells = [
            f"{r[k]['lift_pct']:+.2f}% (p {r[k]['p']:.2f})"
            for k in ("val_old", "val_new", "test_old", "test_new")
        ]
        replayed = sum(1 for s in r["source"] if s == "replayed")
        lines.append(
            f"| {r['ranker']} | {r['method']} | {len(r['seeds'])} ({replayed} replayed) | {kept} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "MAIL against control under each rule (lift of MAIL's mean over control's, paired p):",
        "",
        "| tower | seeds | rule | val old | val new | test old | test new |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if r["method"] != "mail vs control":
            continue
        for rule in ("ndcg", "ndcg-served"):
            cells = [
                f"{r[f'{k}_{rule}']['lift_pct']:+.2f}% (p {r[f'{k}_{rule}']['p']:.2f})"
                for k in ("val_old", "val_new", "test_old", "test_new")
            ]
            lines.append(f"| {r['ranker']} | {len(r['seeds'])} | {rule} | " + " | ".join(cells) + " |")
    if missing:
        lines += [
            "",
            "Cells with no `ndcg` row yet (train them with `--select ndcg`): " + ", ".join(map(str, missing)),
        ]
    if disagree:
        lines += ["", "**Replay and trained row disagree:** " + "; ".join(disagree)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--served", type=Path, required=True, help="rows trained with --select ndcg-served")
    parser.add_argument(
        "--all", type=Path, required=True, help="rows trained with --select ndcg (this machine)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "select-served")
    parser.add_argument("--patience", type=int, default=2, help="TrainConfig.patience of the runs")
    parser.add_argument("--epochs", type=int, default=12, help="TrainConfig.epochs of the runs")
    parser.add_argument(
        "--missing", action="store_true", help="print the cells that need an ndcg row, and stop"
    )
    args = parser.parse_args(argv)
    served = _load(args.served)
    paired, missing, disagree = pair(served, _load(args.all), args.patience, args.epochs)
    if args.missing:
        for cell in missing:
            print(*cell)
        return 0
    records = compare(served, paired)
    command = command_line("benchmarks.offline.selection", None if argv is None else list(argv))
    text = markdown(records, command, missing, disagree)
    args.out.with_name(args.out.name + ".json").write_text(
        json.dumps(
            {"command": command, "records": records, "missing": missing, "disagree": disagree}, indent=1
        )
    )
    args.out.with_name(args.out.name + ".md").write_text(text)
    print(text)
    return 1 if disagree else 0


if __name__ == "__main__":
    raise SystemExit(main())
