"""Which weights should score a new user's first clicks, chosen on validation.

    python -m benchmarks.offline.first_clicks [--seeds 0 1 2 3 4] [--jobs 2]

A bundle holds two sets of weights: everyone's (early stopping on all users' validation NDCG@10)
and new users' own (the cold checkpoint: the epoch where new users' validation NDCG@10 peaked,
their learned logit scaled towards the segment's list by `cold_scale`). Up to now the cold one
scored a user with an unknown id only before the first click; from the first click on, everyone's
weights took over, and the page got worse than the most-liked list at one click (offline-catalog.md,
few-shot). This measures both sets of weights, and the cold one at other scales, for new users
whose first n clicks are known (n = 0, 1, 3, 5, 10; `suite.fewshot_catalog`).

Trains `control` and `mail` as the product does (`cold_scale.train_as_product`), then ranks the
whole catalog for validation and test new users with each set of weights at every n, the
most-liked lists beside them. The choice, made on validation alone, pooled over both models and
every seed: the cold checkpoint as shipped keeps scoring an unknown-id user while it beats
everyone's weights at every measured n up to theirs; the first n where it does not ends it
(`TrainConfig.cold_clicks`). Test figures are written beside the choice and choose nothing.
Writes benchmarks/results/first-clicks.jsonl (resumable, one row per model and seed), .json, .md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.offline.cold_scale import LISTS, MODELS, scaled, train_as_product
from benchmarks.offline.report import paired_p
from benchmarks.offline.resumable import header, resume, write
from benchmarks.offline.resumable import parser as screen_parser

RESULTS = Path(__file__).resolve().parent.parent / "results"
NS = (0, 1, 3, 5, 10)  # clicks known per new user (0: the cold start itself)
SHIPPED = "cold|0.25"  # the cold checkpoint as the bundle ships it (train.COLD_SCALE)
WEIGHTS = (("main", 1.0), ("cold", 0.25), ("cold", 0.5), ("cold", 1.0))


def run_seed(model_name: str, seed: int, data_dir: str | None) -> dict[str, Any]:
    """Train one model; new users' NDCG@10 and P@10 at every n for each set of weights and list."""
    import torch

    from benchmarks.offline.suite import fewshot_catalog
    from model_export import popular
    from model_export.batches import Batches
    from model_export.evaluation import cold_model, rank_part
    from model_export.protocol import TEST, VAL

    prepared, model, history, tcfg, seconds = train_as_product(model_name, seed, data_dir)
    data = prepared.encoded
    batches = Batches(data, fill_new_users=False)
    cold = cold_model(model, history)
    parts = (("val", VAL), ("test", TEST))

    def figures(ranked: dict[str, Any]) -> dict[str, float]:
        return {"new": ranked["new"]["ndcg@10"], "new_p10": ranked["new"]["precision@10"]}

    rows: dict[str, Any] = {}
    with torch.no_grad():
        for name, scale in WEIGHTS:
            m = scaled(cold.model if name == "cold" and cold is not None else model, scale)
            rows[f"{name}|{scale}"] = {
                part: {
                    "0": figures(rank_part(m, batches, p)),
                    **{n: figures(fs["ranking"]) for n, fs in fewshot_catalog(m, prepared, True, p).items()},
                }
                for part, p in parts
            }
    for method in LISTS:
        chosen, _ = popular.by_method(data, method)
        rows[method] = {
            part: {
                "0": figures(popular.rank(data, chosen, data.ranking[p])),
                **{n: figures(fs["ranking"]) for n, fs in fewshot_catalog(chosen, prepared, True, p).items()},
            }
            for part, p in parts
        }
    return {
        "model": model_name,
        "seed": seed,
        "seconds": seconds,
        "best_epoch": history.best_epoch,
        "cold_epoch": history.cold_epoch,
        "rows": rows,
    }


def choose(rows: list[dict[str, Any]]) -> tuple[int, dict[str, dict[str, float]]]:
    """`cold_clicks`: one more than the largest n up to which the shipped cold checkpoint's mean
    validation NDCG@10 (both models, every seed) beats everyone's weights at every measured n;
    and those means per weights and n."""
    import numpy as np

    keys = [k for k in rows[0]["rows"] if k not in LISTS]
    val = {
        k: {str(n): float(np.mean([r["rows"][k]["val"][str(n)]["new"] for r in rows])) for n in NS}
        for k in keys
    }
    last = -1
    for n in NS:
        if val[SHIPPED][str(n)] <= val["main|1.0"][str(n)]:
            break
        last = n
    return last + 1, val


def main(argv: list[str] | None = None) -> int:
    args = screen_parser(__doc__, RESULTS / "first-clicks").parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    wanted = [(m, s) for s in args.seeds for m in MODELS]
    rows, computed = resume(args.out, wanted, run_seed, args.data_dir, args.jobs)
    command = " ".join(["python -m benchmarks.offline.first_clicks", *(argv or sys.argv[1:])])
    cold_clicks, val = choose(rows)
    result = {
        **header(args.out, command, computed, started),
        "cold_clicks": cold_clicks,
        "val_means": val,
        "rows": sorted(rows, key=lambda r: (r["model"], r["seed"])),
    }
    write(args.out, result, markdown(result))
    print(f"chosen on validation: the cold checkpoint scores unknown-id users below {cold_clicks} clicks")
    return 0


def markdown(result: dict[str, Any]) -> str:
    import numpy as np

    rows = result["rows"]
    lines = [
        "# Which weights score a new user's first clicks (`TrainConfig.cold_clicks`), chosen on validation",
        "",
        *(f"`{c}`" for c in result["commands"]),
        "",
        f"Machine: {result['machine']['cores']} cores, torch {result['machine']['torch']}. "
        + (__doc__ or "").split("\n\n")[3].replace("\n", " "),
        "",
        "n = clicks known per new user (strict protocol: never trained on): the user's first n liked "
        "interactions before any validation or test sample, fed as behavior and no longer ranked or "
        "counted; the cases at n >= 1 are the new users with a revealed click. `main` = everyone's "
        "weights, `cold, a` = new users' own checkpoint, its learned logit times a (0.25 ships). "
        "Each cell: mean test NDCG@10 of new users and the paired lift over the ten most-liked items "
        "(p: paired t-test over seeds); the validation means that choose are in the last table.",
        "",
        f"**Chosen on validation: the cold checkpoint scores an unknown-id user with fewer than "
        f"{result['cold_clicks']} clicks** (everyone's weights from then on).",
        "",
    ]
    ns = [str(n) for n in NS]
    for model in MODELS:
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        lines += [
            f"## {model}, seeds {', '.join(str(r['seed']) for r in rs)}",
            "",
            "| weights | " + " | ".join(f"n = {n}" for n in ns) + " |",
            "|---|" + "---:|" * len(ns),
        ]
        for key in rs[0]["rows"]:
            cells = []
            for n in ns:
                t = [r["rows"][key]["test"][n]["new"] for r in rs]
                pt = [r["rows"]["popularity"]["test"][n]["new"] for r in rs]
                lift = 100 * np.mean(np.array(t) / np.array(pt) - 1)
                p = "" if key == "popularity" else f" ({paired_p(t, pt):.3f})"
                cells.append(f"{np.mean(t):.4f}, {lift:+.1f}%{p}")
            lines.append(f"| {_name(key)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Validation means (both models, every seed): what chooses",
        "",
        "| weights | " + " | ".join(f"n = {n}" for n in ns) + " |",
        "|---|" + "---:|" * len(ns),
    ]
    for key, by_n in result["val_means"].items():
        lines.append(f"| {_name(key)} | " + " | ".join(f"{by_n[n]:.4f}" for n in ns) + " |")
    lines.append("")
    return "\n".join(lines)


def _name(key: str) -> str:
    """A row's name in the tables ("cold|0.25" -> "cold, a = 0.25")."""
    weights, _, scale = key.partition("|")
    return f"{weights}, a = {scale}" if scale else key


if __name__ == "__main__":
    raise SystemExit(main())
