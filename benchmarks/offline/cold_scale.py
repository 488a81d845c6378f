"""How much of what the tower learned over its prior a new user's page keeps, chosen on validation.

    python -m benchmarks.offline.cold_scale [--seeds 0 1 2 3 4] [--jobs 2]

The catalog task's ranker scores an item as a fixed prior (the log of its liked share in the
user's segment) plus what the tower learned over it. For a new user (unknown id, no history) the
tower reads attributes alone, and on MovieLens they say little about taste (R^2 of MAIL's virtual
behavior about 0): what it learned over the prior may be more noise than signal. Scaling that
learned part by a in [0, 1] (`Ranker.scale_learned`: the output layer and item bias times a; 0 is
the segment's list alone, 1 the tower as trained) trades one for the other.

Trains `control` and `mail` as the product does (MovieLens 100K, strict protocol, BaseDNN, the
adopted catalog task, a cold checkpoint kept, `cold_scale` 1), then ranks the whole catalog for
validation and test new users with each a, from both checkpoints (everyone's, `main`; new users'
own, `cold`), with the most-liked lists beside them. The choice, made on validation alone: the
checkpoint and a with the highest mean validation NDCG@10 of new users over both models and every
seed; test figures are written beside it and choose nothing. Writes
benchmarks/results/cold-scale.jsonl (resumable, one row per model and seed), .json and .md.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.offline.onboarding_answer import ANSWER
from benchmarks.offline.report import paired_p
from benchmarks.offline.resumable import earlier, header, preamble, resume, write
from benchmarks.offline.resumable import parser as screen_parser
from benchmarks.offline.task_choice import BUDGET, DEFAULT, SOFTMAX_POP, screen_spec

RESULTS = Path(__file__).resolve().parent.parent / "results"
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)  # 1.25: past the trained tower, a check of the curve
MODELS = ("control", "mail")
LISTS = ("popularity", "popularity-segment")


def train_as_product(
    model_name: str, seed: int, data_dir: str | None, answer: dict[str, Any] | None = None
) -> tuple[Any, Any, Any, Any, float]:
    """`model_name` trained as the product trains it (MovieLens 100K, strict protocol, BaseDNN,
    the adopted catalog task, a cold checkpoint kept) with `cold_scale` 1: the weights as trained,
    scales applied by the caller; `answer`: a declared-genres attribute built this way (`RunSpec`'s
    onboarding fields). Returns (prepared data, model, history, train config, seconds)."""
    from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.pipeline import prepare
    from model_export.train import TrainConfig, train

    cfg = ModelConfig(
        model=model_name,
        ranker=RankerConfig(item_prior=True, prior_segment="auto"),  # task_choice.SEGMENT_PRIOR
        zero_shot=ZeroShotConfig() if model_name == "mail" else None,
    )
    tcfg = TrainConfig(
        **{
            **BUDGET,
            **DEFAULT,
            **SOFTMAX_POP,
            "cold_checkpoint": True,
            "cold_scale": 1.0,
            "seed": seed,
            "progress": False,
        }
    )
    prepared = prepare(replace(screen_spec(cfg, tcfg, data_dir), **(answer or {})))
    started = time.perf_counter()
    model, history = train(prepared.encoded, cfg, tcfg)
    return prepared, model, history, tcfg, time.perf_counter() - started


def scaled(model: Any, scale: float) -> Any:
    """A copy of `model` in eval mode, its learned logit times `scale` (`Ranker.scale_learned`)."""
    out = copy.deepcopy(model)
    out.ranker.scale_learned(scale)
    return out.eval()


def run_seed(
    model_name: str, seed: int, data_dir: str | None, answer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train one model and rank validation and test new users at every scale, both checkpoints
    (`answer`: with a declared-genres attribute, as `train_as_product`)."""
    import torch

    from model_export import popular
    from model_export.batches import Batches
    from model_export.evaluation import cold_model, rank_part
    from model_export.protocol import TEST, VAL

    prepared, model, history, tcfg, seconds = train_as_product(model_name, seed, data_dir, answer)
    data = prepared.encoded
    batches = Batches(data, fill_new_users=False)
    cold = cold_model(model, history)

    def new_users(ranked: dict[str, Any]) -> dict[str, float]:
        return {"new": ranked["new"]["ndcg@10"], "new_p10": ranked["new"]["precision@10"]}

    rows: dict[str, Any] = {}
    with torch.no_grad():
        for name, weights in (("main", model), ("cold", cold.model if cold is not None else model)):
            for scale in SCALES:
                m = scaled(weights, scale)  # every case scored by it: new users' figures are read
                rows[f"{name}|{scale}"] = {
                    part: new_users(rank_part(m, batches, p)) for part, p in (("val", VAL), ("test", TEST))
                }
    for method in LISTS:
        chosen, _ = popular.by_method(data, method)
        report = popular.report(data, tcfg, chosen)
        rows[method] = {part: new_users(report["ranking"][part]) for part in ("val", "test")}
    return {
        "model": model_name,
        "seed": seed,
        "seconds": seconds,
        "best_epoch": history.best_epoch,
        "cold_epoch": history.cold_epoch,
        "rows": rows,
    }


def choose(rows: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """The checkpoint|scale with the highest mean validation NDCG@10 of new users over every row
    (both models, every seed), and that mean for each candidate."""
    import numpy as np

    keys = [k for k in rows[0]["rows"] if k not in LISTS and float(k.split("|")[1]) <= 1.0]
    val = {k: float(np.mean([r["rows"][k]["val"]["new"] for r in rows])) for k in keys}
    return max(val, key=lambda k: val[k]), val


def main(argv: list[str] | None = None) -> int:
    parser = screen_parser(__doc__, None)  # --out's default: by --onboarding-answer, below
    parser.add_argument("--note", action="append", default=[], help="a line for the report, kept across runs")
    parser.add_argument(
        "--onboarding-answer",
        action="store_true",
        help="with the informative declared-genres answer of benchmarks.offline.onboarding_answer "
        "(first 10 interactions, by lift; default --out: results/cold-scale-onboarding)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.out is None:
        args.out = RESULTS / ("cold-scale-onboarding" if args.onboarding_answer else "cold-scale")
    started = time.perf_counter()
    wanted = [(m, s) for s in args.seeds for m in MODELS]
    compute = partial(run_seed, answer=ANSWER) if args.onboarding_answer else run_seed
    rows, computed = resume(args.out, wanted, compute, args.data_dir, args.jobs)
    notes = earlier(args.out).get("notes", [])
    command = " ".join(["python -m benchmarks.offline.cold_scale", *(argv or sys.argv[1:])])
    chosen, val = choose(rows)
    result = {
        **header(args.out, command, computed, started),
        "notes": [*notes, *args.note],
        "chosen": chosen,
        "val_means": val,
        "rows": sorted(rows, key=lambda r: (r["model"], r["seed"])),
    }
    write(args.out, result, markdown(result))
    print(f"chosen on validation: {chosen}")
    return 0


def markdown(result: dict[str, Any]) -> str:
    import numpy as np

    rows, chosen = result["rows"], result["chosen"]
    lines = [
        *preamble(
            "New users' share of the learned logit (`TrainConfig.cold_scale`), chosen on validation",
            result,
            __doc__,
        ),
        "",
        "Each model trains once per seed; every row below scores that run's validation and test new "
        "users (strict protocol: never trained on) over the whole catalog. `main` = the weights "
        "early stopping keeps for everyone, `cold` = new users' own checkpoint, their learned "
        "logit times a. vs popularity = paired relative lift over the ten most-liked items on the "
        "same seed (p: paired t-test over seeds). 1.25 is outside the choice.",
        "",
        f"**Chosen on validation: {_name(chosen)}** (mean validation NDCG@10 of new users, both models, "
        f"every seed: {result['val_means'][chosen]:.4f}; the tower as trained, {_name('cold|1.0')}: "
        f"{result['val_means'].get('cold|1.0', float('nan')):.4f}).",
        "",
        *(line for note in result.get("notes", []) for line in (note, "")),
        "",
    ]
    for model in MODELS:
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        seeds = [r["seed"] for r in rs]
        lines += [
            f"## {model}, seeds {', '.join(map(str, seeds))}",
            "",
            "epochs (everyone's / new users'): "
            + ", ".join(f"{r['best_epoch']}/{r['cold_epoch']}" for r in rs),
            "",
            "| weights | val NDCG@10 new | vs popularity | test NDCG@10 new | vs popularity (p) "
            "| test P@10 new | vs popularity (p) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        pop = {part: [r["rows"]["popularity"][part] for r in rs] for part in ("val", "test")}
        for key in rs[0]["rows"]:
            v = np.array([r["rows"][key]["val"]["new"] for r in rs])
            pv = np.array([p["new"] for p in pop["val"]])
            cells = []
            for metric in ("new", "new_p10"):
                t = [r["rows"][key]["test"][metric] for r in rs]
                pt = [p[metric] for p in pop["test"]]
                lift = 100 * np.mean(np.array(t) / np.array(pt) - 1)
                p = "–" if key == "popularity" else f"{paired_p(t, pt):.3f}"
                cells.append(f"{np.mean(t):.4f} | {lift:+.1f}% ({p})")
            name = _name(key)
            name = f"**{name}**" if key == chosen else name
            lines.append(
                f"| {name} | {v.mean():.4f} | {100 * np.mean(v / pv - 1):+.1f}% | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _name(key: str) -> str:
    """A row's name in the tables ("cold|0.25" -> "cold, a = 0.25")."""
    if "|" not in key:
        return key
    weights, scale = key.split("|")
    return f"{weights}, a = {scale}"


if __name__ == "__main__":
    raise SystemExit(main())
