"""How the catalog task is set up, chosen on validation only (issue #12).

    python -m benchmarks.offline.task_choice [--seeds 0] [--jobs 2]

Trains `control` (and `mail`) on MovieLens 100K, strict protocol, BaseDNN, under each variant of
the catalog task: positives = liked (rated >= 4) or any rating; rated-but-not-liked items as
negatives or not; uniform or popularity-weighted sampled negatives; negatives per positive; the
share of training rows shown as a new user; for MAIL, whether the zero-shot tower reads the user
id; a learned item bias in the ranker, or a fixed log-popularity prior on its logit (adopted),
overall or of the user's segment of one attribute (chosen on validation); the checkpoint kept by
validation NDCG@10 or AUC. Every variant is read on validation (whole-catalog NDCG@10 of the
validation new users, held out whole as test new users are, and of old users' validation slice);
test figures are written beside them for the record and choose nothing. Writes
benchmarks/results/catalog-task.jsonl (resumable), .json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.offline.runner import machine
from model_export import popular
from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
from model_export.pipeline import Prepared, RunSpec, prepare, run
from model_export.train import TrainConfig

RESULTS = Path(__file__).resolve().parent.parent / "results"
BUDGET: dict[str, Any] = {"epochs": 12, "threads": 1}  # early stopping on validation NDCG@10
DEFAULT: dict[str, Any] = {
    "positives": "liked",
    "rated_negatives": False,
    "sampling": "uniform",
    "negatives": 4,
    "cold_rows": 0.2,
}
BIAS = {"ranker": {"item_bias": True}}
PRIOR = {"ranker": {"item_prior": True}}
SEGMENT_PRIOR = {"ranker": {"item_prior": True, "prior_segment": "auto"}}
ADOPTED = ("segment prior",)  # variants the product's catalog task now trains with (README, __main__)
# (name, model, task overrides, model overrides): one knob moved from DEFAULT at a time
VARIANTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("most-liked items", "popularity", {}, {}),
    ("default", "control", {}, {}),
    ("item bias", "control", {}, BIAS),
    ("item prior", "control", {}, PRIOR),
    ("segment prior", "control", {}, SEGMENT_PRIOR),
    ("positives=any", "control", {"positives": "any"}, {}),
    ("rated<4 as negatives", "control", {"rated_negatives": True}, {}),
    ("popularity sampling", "control", {"sampling": "popularity"}, {}),
    ("negatives=2", "control", {"negatives": 2}, {}),
    ("negatives=8", "control", {"negatives": 8}, {}),
    ("cold rows=0", "control", {"cold_rows": 0.0}, {}),
    ("cold rows=0.5", "control", {"cold_rows": 0.5}, {}),
    ("select on AUC", "control", {"select": "auc"}, {}),
    ("most-liked in segment", "popularity-segment", {}, {}),
    # on top of the adopted segment prior ("A, B" is compared with "A")
    ("segment prior, attributes hidden 0.3", "control", {"attr_dropout": 0.3}, SEGMENT_PRIOR),
    ("segment prior, embedding L2 x10", "control", {"embed_l2": 1e-4}, SEGMENT_PRIOR),
    ("segment prior, cold rows=0.5", "control", {"cold_rows": 0.5}, SEGMENT_PRIOR),
    ("default", "mail", {}, {}),
    ("item bias", "mail", {}, BIAS),
    ("item prior", "mail", {}, PRIOR),
    ("segment prior", "mail", {}, SEGMENT_PRIOR),
    ("zst reads user id", "mail", {}, {"zst_user_id": True}),
]

_PREPARED: dict[str, Prepared] = {}


def run_variant(
    name: str, model: str, task: dict[str, Any], change: dict[str, Any], seed: int, data_dir: str | None
) -> dict[str, Any]:
    change = dict(change)
    cfg = ModelConfig(
        model="control" if model.startswith("popularity") else model,
        ranker=RankerConfig(**change.pop("ranker", {})),
        zero_shot=ZeroShotConfig() if model == "mail" else None,
        **change,
    )
    spec = RunSpec(
        dataset="ml-100k",
        data_dir=data_dir,
        protocol="strict",
        seed=seed,
        behavior="clicks",
        model=cfg,
        train=TrainConfig(**{**BUDGET, **DEFAULT, **task, "seed": seed, "progress": False}),
    )
    if str(seed) not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[str(seed)] = prepare(spec)
    started = time.perf_counter()
    if model in popular.METHODS:  # the lists, on the same split: the bars on validation too
        enc = _PREPARED[str(seed)].encoded
        report = popular.report(enc, spec.train, *popular.by_method(enc, model))
    else:
        _, report = run(spec, None, _PREPARED[str(seed)])
    return {
        "variant": name,
        "model": model,
        "seed": seed,
        "task": {**DEFAULT, **task},
        "model_change": change,
        "seconds": round(time.perf_counter() - started, 1),
        "best_epoch": report["best_epoch"],
        "prior": report.get("prior"),
        "val": {"ranking": report["ranking"]["val"], "auc": report["val"]},
        "test": {"ranking": report["ranking"]["test"], "auc": report["test"]},
    }


def _key(name: str, model: str, seed: int) -> str:
    return f"{model}|{name}|{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=RESULTS / "catalog-task")
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="only these variants (names as in the table; all models)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows_path = args.out.with_name(args.out.name + ".jsonl")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {_key(r["variant"], r["model"], r["seed"]) for r in rows}
    chosen = [v for v in VARIANTS if not args.variants or v[0] in args.variants]
    if args.variants and len({v[0] for v in chosen}) != len(set(args.variants)):
        parser.error(f"unknown variant among {args.variants}; choose from {sorted({v[0] for v in VARIANTS})}")
    todo = [(v, s) for s in args.seeds for v in chosen if _key(v[0], v[1], s) not in done]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_variant, *v, s, args.data_dir) for v, s in todo]
        for f in futures:
            row = f.result()
            rows.append(row)
            with rows_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(_line(row), flush=True)
    json_path = args.out.with_name(args.out.name + ".json")
    earlier = json.loads(json_path.read_text()).get("commands", []) if json_path.exists() and rows else []
    command = " ".join(["python -m benchmarks.offline.task_choice", *map(_quote, argv or sys.argv[1:])])
    result = {
        "commands": [*earlier, command],
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "budget": BUDGET,
        "default": DEFAULT,
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    json_path.write_text(json.dumps(result, indent=1))
    args.out.with_name(args.out.name + ".md").write_text(markdown(result))
    return 0


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def _line(row: dict[str, Any]) -> str:
    v, t = row["val"]["ranking"], row["test"]["ranking"]
    return (
        f"{row['model']:>7} {row['variant']:<40} seed {row['seed']}: "
        f"val NDCG@10 new {v['new']['ndcg@10']:.4f} old {v['old']['ndcg@10']:.4f} | "
        f"test new {t['new']['ndcg@10']:.4f} old {t['old']['ndcg@10']:.4f} "
        f"({row['seconds']:.0f}s)"
    )


def markdown(result: dict[str, Any]) -> str:
    import numpy as np

    lines = [
        "# The catalog task: what was tried, chosen on validation",
        "",
        " and ".join(f"`{c}`" for c in result["commands"])
        + f" on {result['date']} ({result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']}). MovieLens 100K, strict protocol, BaseDNN, budget "
        f"{result['budget']}, early stopping on validation NDCG@10 unless the row says otherwise. "
        f"Default: {result['default']}; each row moves one knob. Choice = validation whole-catalog "
        "NDCG@10 of new users (the product's case: validation new users are held out whole, as test "
        "new users are), old users beside it; test columns are for the record only.",
        "",
        "Not rerun here: positives = any rating, rated < 4 as negatives, popularity-weighted "
        "negatives, 2 or 8 negatives per positive, no cold rows. An earlier round tried them (this "
        "file in commit 44fd645), with new users validated on their last few items only, a case unlike "
        "the test's; none beat the default there on new users (three were above it on old users).",
        "",
        "Then, on top of the adopted segment prior, three regularisers of the cold path (control, "
        "seeds 0 and 1): attributes hidden in cold rows, a 10x embedding L2, half the rows cold. None "
        "was above the segment prior on validation, new or old users, so the screen stopped at two "
        "seeds and none was adopted. Beside them the bar: the segment list, chosen on validation too. "
        "s/run is wall time; other jobs sharing the 2 cores inflate the later rounds' figures.",
        "",
        "Adopted since: " + ", ".join(ADOPTED) + " (the catalog task's tower in `make run`, the CLI and "
        "`make bench-offline`). vs default = relative difference of the validation means from the "
        'same model\'s default row (a row named "A, B": from row A), on the seeds both have.',
        "",
        "| model | variant | seeds | val NDCG@10 new | vs default | val NDCG@10 old | vs default "
        "| val AUC new | test NDCG@10 new | test NDCG@10 old | best epoch | s/run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        groups.setdefault((r["model"], r["variant"]), []).append(r)

    def versus(model: str, name: str, group: str) -> str:
        mine = {r["seed"]: r["val"]["ranking"][group]["ndcg@10"] for r in groups[(model, name)]}
        of = name.rsplit(", ", 1)[0] if ", " in name else "default"
        base = {r["seed"]: r["val"]["ranking"][group]["ndcg@10"] for r in groups.get((model, of), [])}
        seeds = sorted(set(mine) & set(base))
        if name == of or not seeds:
            return "–"
        return f"{100 * (np.mean([mine[s] for s in seeds]) / np.mean([base[s] for s in seeds]) - 1):+.1f}%"

    for (model, name), rs in groups.items():
        cells = [
            np.mean([r["val"]["ranking"]["new"]["ndcg@10"] for r in rs]),
            np.mean([r["val"]["ranking"]["old"]["ndcg@10"] for r in rs]),
            np.mean([r["val"]["auc"]["new"]["auc"] for r in rs]),
            np.mean([r["test"]["ranking"]["new"]["ndcg@10"] for r in rs]),
            np.mean([r["test"]["ranking"]["old"]["ndcg@10"] for r in rs]),
        ]
        seconds = np.mean([r["seconds"] for r in rs])
        epochs = "/".join(str(r["best_epoch"]) for r in rs)
        shown = [f"{c:.4f}" for c in cells]
        shown.insert(1, versus(model, name, "new"))
        shown.insert(3, versus(model, name, "old"))
        label = f"**{name}** (adopted)" if name in ADOPTED else name
        lines.append(
            f"| {model} | {label} | {len(rs)} | " + " | ".join(shown) + f" | {epochs} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
