"""When do new users' validation scores peak, against the epoch early stopping keeps? (validation only)

    python -m benchmarks.offline.epochs [--rows benchmarks/results/offline-catalog.jsonl]

Reads the per-epoch validation record of every trained row of a catalog-task results file (the
offline benchmark's) and, per setting and method, writes:
- the mean over seeds of new and of all users' validation NDCG@10 at each epoch (a run stopped
  early keeps its last epoch's value from there on);
- the epochs early stopping kept (all users' validation NDCG@10) and new users' score at them;
- what new users would get from a checkpoint of their own, estimated without choosing on the
  seed it is scored on: for each seed, the epoch that maximises the other seeds' mean new-user
  curve (leave one seed out), read on that seed's curve.
No test figure is read. Writes benchmarks/results/catalog-epochs.md and .json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.command import command_line

RESULTS = Path(__file__).resolve().parent.parent / "results"
Curves = dict[int, tuple[list[float], list[float], int]]  # seed -> (new, all, kept epoch)


def curves(rows: list[dict[str, Any]]) -> dict[tuple[str, str], Curves]:
    """Per (setting, method): each seed's validation NDCG@10 curves of new and all users, and the
    epoch it kept. Rows without a per-epoch NDCG record (the lists, the rating task) are skipped."""
    out: dict[tuple[str, str], Curves] = {}
    for r in rows:
        epochs = r.get("losses") or []
        if not epochs or "val_ndcg_new" not in epochs[0]:
            continue
        c = r["cell"]
        setting = f"{c['dataset']}, {c['protocol']}, {c['ranker']}"
        if c.get("onboarding_noise") is not None:
            setting += f", declared genres noise {c['onboarding_noise']}"
        new = [float(e["val_ndcg_new"]) for e in epochs]
        every = [float(e["val_ndcg"]) for e in epochs]
        out.setdefault((setting, c["method"]), {})[int(c["seed"])] = (new, every, int(r["best_epoch"]))
    return out


def _padded(series: list[list[float]]) -> np.ndarray:
    length = max(len(s) for s in series)
    return np.array([s + [s[-1]] * (length - len(s)) for s in series])


def summarize(by_seed: Curves) -> dict[str, Any]:
    seeds = sorted(by_seed)
    new = _padded([by_seed[s][0] for s in seeds])
    every = _padded([by_seed[s][1] for s in seeds])
    kept = [by_seed[s][2] for s in seeds]
    at_kept = [float(new[i, e - 1]) for i, e in enumerate(kept)]
    own, own_epochs = [], []
    for i in range(len(seeds) if len(seeds) > 1 else 0):  # one seed: nothing to leave out
        e = int(np.delete(new, i, axis=0).mean(axis=0).argmax())
        own.append(float(new[i, e]))
        own_epochs.append(e + 1)
    kept_mean = float(np.mean(at_kept))
    own_mean = float(np.mean(own)) if own else None
    return {
        "seeds": seeds,
        "new_by_epoch": new.mean(axis=0).round(4).tolist(),
        "all_by_epoch": every.mean(axis=0).round(4).tolist(),
        "kept_epochs": kept,
        "new_at_kept": round(kept_mean, 4),
        "new_checkpoint_epochs": own_epochs,
        "new_checkpoint": None if own_mean is None else round(own_mean, 4),
        "lift": None if own_mean is None else round(own_mean / kept_mean - 1, 4),
        "all_drop_at_new_checkpoint": (
            round(
                float(np.mean([every[i, e - 1] for i, e in enumerate(own_epochs)]))
                / float(np.mean([every[i, e - 1] for i, e in enumerate(kept)]))
                - 1,
                4,
            )
            if own
            else None
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Catalog task: when new users' validation NDCG@10 peaks",
        "",
        f"`{result['command']}`, from `{result['rows']}` (validation only; no test figure is read).",
        "",
        "Kept = the epoch early stopping kept (all users' validation NDCG@10), new users' score "
        "there. Own checkpoint = the epoch that maximises the other seeds' mean new-user curve "
        "(leave one seed out), read on the seed's own curve: what a checkpoint chosen for new users "
        "would give them. All users at it = all users' validation NDCG@10 there against at the "
        "kept epoch: what it would cost everyone else, were one set of weights to serve both.",
        "",
        "| setting | method | seeds | kept epochs | new at kept | own checkpoint epochs | new at own "
        "| lift | all users at it |",
        "|---|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lift = "–" if s["lift"] is None else f"{s['lift']:+.1%}"
        drop = "–" if s["all_drop_at_new_checkpoint"] is None else f"{s['all_drop_at_new_checkpoint']:+.1%}"
        own = "–" if s["new_checkpoint"] is None else f"{s['new_checkpoint']:.4f}"
        lines.append(
            f"| {s['setting']} | {s['method']} | {len(s['seeds'])} | {'/'.join(map(str, s['kept_epochs']))} "
            f"| {s['new_at_kept']:.4f} | {'/'.join(map(str, s['new_checkpoint_epochs'])) or '–'} "
            f"| {own} | {lift} | {drop} |"
        )
    lines += ["", "Mean over seeds by epoch, new users / all users:", ""]
    for s in result["summary"]:
        pairs = zip(s["new_by_epoch"], s["all_by_epoch"], strict=True)
        lines.append(
            f"- {s['setting']}, {s['method']}: "
            + " ".join(f"{e}: {n:.3f}/{a:.3f}" for e, (n, a) in enumerate(pairs, 1))
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=Path, default=RESULTS / "offline-catalog.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS / "catalog-epochs")
    args = parser.parse_args(argv)
    if not args.rows.is_file():
        parser.error(f"{args.rows} does not exist: run `python -m benchmarks.offline` first")
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    found = curves(rows)
    if not found:
        parser.error(f"{args.rows} holds no per-epoch validation NDCG (a catalog-task run records it)")
    rel = args.rows.resolve()
    shown = rel.relative_to(Path.cwd()) if rel.is_relative_to(Path.cwd()) else rel
    result = {
        "command": command_line("benchmarks.offline.epochs", list(argv) if argv is not None else None),
        "rows": str(shown),
        "summary": [{"setting": k[0], "method": k[1], **summarize(v)} for k, v in sorted(found.items())],
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
