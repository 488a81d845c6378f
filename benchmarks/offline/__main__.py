"""MAIL against popularity and the cold-start baselines, offline, with tables and plots.

    python -m benchmarks.offline                 # the catalog task (the product's): see catalog_plan
    python -m benchmarks.offline --quick         # the same at one seed, 1 epoch (a few minutes)
    python -m benchmarks.offline --blocks main   # some blocks of the plan only
    python -m benchmarks.offline --task rating   # issue #6's rating-task benchmark (the paper's)

Writes OUT.jsonl (one line per run; a rerun resumes from it), OUT.json (summary, tuning, plan,
machine, wall time), OUT.md (tables) and OUT-*.png, with OUT = benchmarks/results/offline-catalog
(catalog task) or benchmarks/results/offline (rating task), suffixed -quick for --quick and -all
with `--behavior all`. A hand-written reading in OUT-reading.md, if present, is placed at the top
of OUT.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.offline import plots, writeup
from benchmarks.offline.methods import METHODS
from benchmarks.offline.report import paired_p, summarize
from benchmarks.offline.runner import machine
from benchmarks.offline.suite import (
    FEWSHOT_N,
    FEWSHOT_N_CATALOG,
    Block,
    Plan,
    Scale,
    Setting,
    Suite,
    fewshot_rows,
    fewshot_rows_catalog,
)
from model_export.model import RankerConfig, ZeroShotConfig
from model_export.protocol import PROTOCOLS
from model_export.train import SELECT, TrainConfig

RESULTS = Path(__file__).resolve().parent.parent / "results"
ORDER = tuple(METHODS)
BASELINES = ("control", "oracle", "mean-fill", "llae", "dropoutnet", "metaemb", "mail", "mail-mse")
ABLATIONS = ("mail-none", "mail-single", "mail-dual", "mail-blend")
CORE = ("control", "oracle", "mean-fill", "mail")
DIN = ("control", "oracle", "mail")
ONBOARDING = ("control", "oracle", "mean-fill", "llae", "mail")
NOISES = (0.0, 0.5, 1.0)
BEHAVIOR = {"clicks": "clicks", "all": "rated items, clicked or not"}
# the paper's new-user AUC on Alimama (mail-paper.md section 4.5): BaseDNN, MAIL-None/Single/Base
PAPER = {"base": 0.5862, "mail-none": 0.5834, "mail-single": 0.5844, "mail": 0.5934}


def full_plan(seeds: tuple[int, ...] = (0, 1, 2, 3, 4), few: tuple[int, ...] = (0, 1, 2)) -> Plan:
    """Sized to about 40 minutes on 2 free cores (2 workers): 5 seeds for the dataset x protocol
    grid and the baselines, 3 for the ablations, the DIN tower and the onboarding sweep."""
    ml = Setting("ml-100k", "strict")
    bx = (Setting("book-crossing", "strict"), Setting("book-crossing", "mail"))
    sweep = tuple(Setting("ml-100k", "strict", "base", n) for n in NOISES)
    return Plan(
        [
            Block(
                "main", "every method (MAIL's ablations and the blend: fewer seeds)", (ml,), BASELINES, seeds
            ),
            Block("ablations", "MAIL's losses, and the blend for the few-shot regime", (ml,), ABLATIONS, few),
            Block("protocol", "the paper's protocol", (Setting("ml-100k", "mail"),), CORE, seeds),
            Block("book-crossing", "the second dataset, both protocols", bx, CORE, seeds),
            Block("din", "MAIL on the DIN-style tower", (replace(ml, ranker="din"),), DIN, few),
            Block("onboarding", "declared genres (semi-synthetic), noise swept", sweep, ONBOARDING, few),
        ],
        Scale(train={"task": "rating", "epochs": 8, "patience": 2, "threads": 1}),
    )


CATALOG_CORE = ("control", "popularity", "popularity-segment", "oracle", "mail")
# with MAIL as the product trains BaseDNN's too (its own columns for the virtual behavior)
CATALOG_SHIPPED = (*CATALOG_CORE, "mail-own")
CATALOG_BASELINES = ("mean-fill", "dropoutnet", "mail-mse", "llae", "metaemb")
# the catalog task's budget and set-up (chosen on validation: benchmarks/results/catalog-task.md)
# up to 12 epochs, early stopping on validation NDCG@10 (best epochs seen: 5-12)
# `select` ndcg: every row of offline-catalog.jsonl was trained under it (a row that records no
# rule predates rows recording theirs, and counts as ndcg), so the plan keeps it until every block
# is rerun under the product's default, ndcg-served (select-served.md); `--select ndcg-served` runs
# it now. A run resumes from, and reports, only rows of its own rule (`Suite.of_rule`)
# the budget its rows were trained with (TrainConfig's defaults are 20 and 3 since 2026-12-03:
# train-budget.md), kept until every block is rerun, as the early-stopping rule is
CATALOG_TRAIN = {"task": "catalog", "epochs": 12, "patience": 2, "threads": 1, "select": "ndcg"}
# the catalog task's tower: the popularity prior of the user's segment on its logit, the segment
# chosen on each run's validation (the prior itself chosen on validation, as above)
CATALOG_RANKER = RankerConfig(item_prior=True, prior_segment="auto")


def _budget_arg(text: str) -> tuple[int, int]:
    """`--budget`: "EPOCHS,PATIENCE", both positive integers."""
    try:
        epochs, patience = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"EPOCHS,PATIENCE, two integers (e.g. 20,3), not {text!r}") from None
    if epochs < 1 or patience < 1:
        raise argparse.ArgumentTypeError(f"epochs and patience are at least 1, not {text!r}")
    return epochs, patience


def catalog_plan(seeds: tuple[int, ...] = (0, 1, 2, 3, 4), few: tuple[int, ...] = (0, 1, 2)) -> Plan:
    """The catalog task, blocks in priority order (run them with --blocks as time allows): the
    main comparison, the onboarding sweep and the paper's protocol at 5 seeds (the issue's
    targets), the other baselines and Book-Crossing at 3, the DIN tower at 5."""
    ml = Setting("ml-100k", "strict")
    return Plan(
        [
            Block(
                "main",
                "new users never seen in training (the online case)",
                (ml,),
                (*CATALOG_SHIPPED, "mail-blend"),  # the blend: for the few-shot curve
                seeds,
            ),
            Block(
                "onboarding",
                "declared genres (semi-synthetic), clean",
                (Setting("ml-100k", "strict", "base", 0.0),),
                CATALOG_SHIPPED,
                seeds,
            ),
            Block(
                "onboarding-noisy",
                "declared genres (semi-synthetic), half of them random",
                (Setting("ml-100k", "strict", "base", 0.5),),
                CATALOG_SHIPPED,
                seeds,
            ),
            Block("baselines", "the other cold-start methods", (ml,), CATALOG_BASELINES, few),
            Block("protocol", "the paper's protocol", (Setting("ml-100k", "mail"),), CATALOG_CORE, seeds),
            # the ranker without virtual behavior in its training rows (the official code's
            # reading): why MAIL's old users fall behind control's on the paper's protocol, and
            # what it does for the online case
            Block(
                "main-fill",
                "new users never seen in training, MAIL's virtual behavior at inference only",
                (ml,),
                ("mail-infer-only",),
                seeds,
            ),
            Block(
                "protocol-fill",
                "the paper's protocol, MAIL's virtual behavior (or old users' mean) at inference only",
                (Setting("ml-100k", "mail"),),
                ("mail-infer-only", "mean-fill-infer-only"),
                seeds,
            ),
            Block(
                "book-crossing",
                "the second dataset, both protocols",
                (Setting("book-crossing", "strict"), Setting("book-crossing", "mail")),
                CATALOG_CORE,
                few,
            ),
            # planned at 5 seeds since 2026-12-02 (old users' MAIL-control gap was within noise at 3);
            # a DIN run takes 13-23 min on this machine, so `--seeds` says how many a session runs
            Block("din", "MAIL on the DIN-style tower", (replace(ml, ranker="din"),), CATALOG_CORE, seeds),
            # why MAIL's old users fall behind control's on DIN and not on BaseDNN: DIN reads the
            # virtual items through the attention unit that reads real history (BaseDNN mixes the
            # virtual vector in after its pooling); this gives them a unit of their own, and then
            # also keeps that reading from training the embeddings
            Block(
                "din-attention",
                "MAIL on the DIN-style tower, the virtual items read by their own attention unit",
                (replace(ml, ranker="din"),),
                ("mail-own-attention", "mail-own-attention-detached"),
                seeds,
            ),
        ],
        Scale(train=CATALOG_TRAIN, ranker=CATALOG_RANKER),
        tune=False,
    )


def catalog_quick_plan() -> Plan:
    """The catalog plan's main and onboarding blocks at one seed, 1 epoch."""
    blocks = [b for b in catalog_plan((0,), (0,)).blocks if b.name in ("main", "onboarding")]  # noise 0
    return Plan(blocks, Scale(train={**CATALOG_TRAIN, "epochs": 1}, ranker=CATALOG_RANKER), tune=False)


def quick_plan() -> Plan:
    """The full plan at one seed, without tuning, 1 epoch per run, noise 0 and 1 only (<= 5 min)."""
    blocks = [
        replace(b, settings=tuple(s for s in b.settings if s.onboarding_noise != 0.5))
        for b in full_plan((0,), (0,)).blocks
    ]
    return Plan(blocks, Scale(train={"task": "rating", "epochs": 1, "patience": 2, "threads": 1}), tune=False)


def only_protocols(blocks: list[Block], keep: set[str]) -> list[Block]:
    """The blocks' settings of these protocols only; blocks left with none are dropped."""
    kept = [replace(b, settings=tuple(s for s in b.settings if s.protocol in keep)) for b in blocks]
    return [b for b in kept if b.settings]


def smoke_plan(catalog: bool = False) -> Plan:
    """Every code path (tuning, few-shot, two towers, resuming, plots) on synthetic data, in seconds."""
    syn = Setting("synthetic", "strict")
    scale = Scale(
        d_embed=8,
        behavior_len=8,
        ranker=RankerConfig(hidden=(16, 8), d_attention=8, item_prior=catalog),
        zst=ZeroShotConfig(d_hidden=8, width=16, d_attention=8),
        train={
            "task": "catalog" if catalog else "rating",
            "epochs": 1,
            "batch_size": 1024,
            "lr": 5e-3,
            "lr_zst": 5e-3,
            "threads": 1,
        },
    )
    methods = ("control", "oracle", "mean-fill", "mail", "mail-blend") + (
        ("popularity", "popularity-segment") if catalog else ()
    )
    return Plan(
        [
            Block(
                "main",
                "tuning, few-shot",
                (syn,),
                methods,
                (0, 1),
            ),
            Block("din", "DIN tower", (replace(syn, ranker="din"),), ("control", "mail"), (0,)),
        ],
        scale,
        tune=not catalog,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one seed, no tuning, 1 epoch (<= 5 minutes)")
    mode.add_argument("--smoke", action="store_true", help="synthetic data, tiny towers (the tests)")
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=None, help="output prefix (default: by mode)")
    parser.add_argument("--fresh", action="store_true", help="discard the rows of an earlier run")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--task",
        choices=["catalog", "rating"],
        default="catalog",
        help="catalog: rank the whole catalog (the product's task; default) | rating: issue #6's benchmark",
    )
    parser.add_argument("--blocks", default=None, help="comma-separated block names to run (default: all)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the rows already in the results file",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="run only the first SEEDS seeds of every block (a time budget)",
    )
    parser.add_argument(
        "--protocols",
        default=None,
        help="comma-separated protocols to run within the blocks (default: all; a time budget, e.g. "
        "strict alone of Book-Crossing's two)",
    )
    parser.add_argument(
        "--behavior",
        choices=list(BEHAVIOR),
        default="clicks",
        help="behavior = earlier clicks (what serving sees; default) or every earlier rated item "
        "(writes OUT-all)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes, one torch thread each (default: the cores, at most 4)",
    )
    parser.add_argument(
        "--select",
        choices=list(SELECT),
        default=None,
        help="what early stopping keeps in every run (TrainConfig.select; default: the plan's); "
        "each trained row records it, and a run resumes from and reports only rows of its own",
    )
    parser.add_argument(
        "--budget",
        type=_budget_arg,
        default=None,
        metavar="EPOCHS,PATIENCE",
        help="every run's epoch cap and early stopping's patience (default: the plan's, 12,2 for the "
        "catalog task; the product trains 20,3); rows record it, and a run resumes from and reports "
        "only rows of its own, as with --select",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    catalog = args.task == "catalog"
    if args.smoke:
        plan = smoke_plan(catalog)
    elif catalog:
        plan = catalog_quick_plan() if args.quick else catalog_plan()
    else:
        plan = quick_plan() if args.quick else full_plan()
    if args.blocks:
        wanted = args.blocks.split(",")
        if unknown := set(wanted) - {b.name for b in plan.blocks}:
            parser.error(f"unknown blocks {sorted(unknown)}; the plan has {[b.name for b in plan.blocks]}")
        plan.blocks = [b for b in plan.blocks if b.name in wanted]
    if args.seeds is not None:
        plan.blocks = [replace(b, seeds=b.seeds[: args.seeds]) for b in plan.blocks]
    if args.protocols:
        keep = set(args.protocols.split(","))
        if unknown := keep - set(PROTOCOLS):
            parser.error(f"unknown protocols {sorted(unknown)}; choose from {list(PROTOCOLS)}")
        plan.blocks = only_protocols(plan.blocks, keep)
        if not plan.blocks:
            parser.error(f"no block left has a setting of protocol {sorted(keep)}")
    plan.scale = replace(plan.scale, behavior=args.behavior)
    if args.select is not None:
        plan.scale = replace(plan.scale, train={**plan.scale.train, "select": args.select})
    if args.budget is not None:
        if args.quick or args.smoke:
            parser.error("--budget sets the full plan's budget (--quick and --smoke train 1 epoch)")
        epochs, patience = args.budget
        plan.scale = replace(plan.scale, train={**plan.scale.train, "epochs": epochs, "patience": patience})
    name = "offline-catalog" if catalog else "offline"
    name += "-smoke" if args.smoke else "-quick" if args.quick else ""
    name += "" if args.behavior == "clicks" else f"-{args.behavior}"
    out: Path = args.out or RESULTS / name
    rows_path = out.with_name(out.name + ".jsonl")
    if args.fresh:
        rows_path.unlink(missing_ok=True)
    started = time.perf_counter()
    suite = Suite(plan, args.data_dir, rows_path, progress=not args.smoke, jobs=args.jobs)
    rows = suite.execute(run=not args.report_only)
    if args.report_only and not rows:
        raise SystemExit(
            f"benchmarks.offline --report-only: {rows_path} holds no row of this plan (task "
            f"{args.task}{', quick' if args.quick else ''}, its blocks, budget and early-stopping rule): "
            "nothing to report (run without --report-only to train them, or name the plan that trained them)"
        )
    result = assemble(plan, suite, rows, argv if argv is not None else sys.argv[1:])
    result["jobs"] = args.jobs
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    json_path = out.with_name(out.name + ".json")
    earlier = [] if args.fresh or not json_path.exists() else _invocations(json.loads(json_path.read_text()))
    result["invocations"] = [*earlier, *_invocations(result)]
    if catalog:
        result["plots"] = [] if args.no_plots else draw_catalog(result, out)
    else:
        result["plots"] = [] if args.no_plots else draw(result, out)
    json_path.write_text(json.dumps(result, indent=1))
    text = catalog_markdown(result, out) if catalog else markdown(result, out)
    out.with_name(out.name + ".md").write_text(text)
    if not args.smoke:
        print(text)
    return 0


def assemble(plan: Plan, suite: Suite, rows: list[dict[str, Any]], argv: Sequence[str]) -> dict[str, Any]:
    tuning = plan.tuning_setting
    main_rows = [r for r in rows if _is(r["cell"], tuning)]
    return {
        "command": " ".join(["python -m benchmarks.offline", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "runs_this_invocation": suite.ran,
        "rows_of_another_rule": suite.other_rule,
        "seconds_all_runs": round(sum(r["seconds"] for r in suite.rows.values()), 1),
        "budget": {
            "train": {
                **plan.scale.train,
                **({"select": suite.select} if suite.select is not None else {}),  # the rule, always named
                "note": "TrainConfig defaults otherwise, the same for every method",
            },
            "behavior": plan.scale.behavior,
            "ranker": {k: v for k, v in asdict(plan.scale.ranker).items() if k != "kind"},
            "d_embed": plan.scale.d_embed,
            "behavior_len": plan.scale.behavior_len,
        },
        "plan": [
            {
                "block": b.name,
                "about": b.about,
                "settings": [s.__dict__ for s in b.settings],
                "methods": list(b.methods),
                "seeds": list(b.seeds),
            }
            for b in plan.blocks
        ],
        "tuning_setting": tuning.__dict__ | {"seed": plan.tuning_seed},
        "tuning": suite.tuning,
        "chosen": {m: suite.value(m) for m in METHODS},
        "summary": summarize(rows),
        "fewshot": summarize(
            fewshot_rows_catalog(main_rows)
            if plan.scale.train.get("task") == "catalog"
            else fewshot_rows(main_rows)
        ),
        "loss_curves": {r["cell"]["method"]: r["batches"] for r in main_rows if "batches" in r},
        "checkpoints": two_checkpoints(rows),
    }


def two_checkpoints(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting and method, for the runs that kept new users' own checkpoint: new users' test
    NDCG@10 and precision@10 served by it, against the same run with one checkpoint for everyone
    (`one_checkpoint`): means, paired relative lift and paired t-test p over the seeds."""
    import numpy as np

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("cold_epoch") is not None:  # kept one (a run whose epochs coincide: the same weights)
            c = r["cell"]
            key = (c["dataset"], c["protocol"], c["ranker"], c["onboarding_noise"], c["method"])
            groups.setdefault(key, []).append(r)
    out = []
    for (dataset, protocol, ranker, noise, method), rs in groups.items():
        record: dict[str, Any] = {
            "dataset": dataset,
            "protocol": protocol,
            "ranker": ranker,
            "onboarding_noise": noise,
            "method": method,
            "seeds": len(rs),
            "cold_epochs": [r.get("cold_epoch") for r in rs],
            "cold_scales": [r.get("cold_scale", 1.0) for r in rs],  # rows from before it: 1
            "best_epochs": [r["best_epoch"] for r in rs],
        }
        for metric in ("ndcg@10", "precision@10"):
            two = np.array([r["ranking"]["test"]["new"][metric] for r in rs])
            one = np.array([r.get("one_checkpoint", r)["ranking"]["test"]["new"][metric] for r in rs])
            record[metric] = {
                "two": float(two.mean()),
                "one": float(one.mean()),
                "lift_pct": float(100 * np.mean(two / one - 1)),
                "p": paired_p(list(two), list(one)),
            }
        out.append(record)
    return out


def _checkpoints_table(records: list[dict[str, Any]]) -> list[str]:
    if not records:
        return []
    lines = [
        "## Two checkpoints: new users' own against one for everyone",
        "",
        "Each run keeps, beside the weights early stopping chooses for all users, those of the epoch "
        "where its validation new users' NDCG@10 peaked (`TrainConfig.cold_checkpoint`), their "
        "learned logit scaled by `cold_scale` where the run records one below 1 (the default since "
        "it was chosen: 0.25, `cold-scale.md`; runs from before record none: 1); a test user "
        "with an unknown id and no history is scored with them (so is one with fewer clicks than "
        "the run's `cold_clicks`, in the few-shot table), everyone else as before, so old users' "
        "figures are the same either way. Here: new users' test figures (no click) of "
        "the same runs both ways (paired by run; p = paired t-test over the seeds). A run whose two "
        "epochs coincide and whose scale is 1 has one set of weights: it counts as no change.",
        "",
        "| setting | method | seeds | new NDCG@10, two / one | lift (p) | new P@10, two / one | lift (p) "
        "| epochs: new users' / everyone's | scale |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = [
            f"{r[m]['two']:.4f} / {r[m]['one']:.4f} | {r[m]['lift_pct']:+.1f}% ({r[m]['p']:.3f})"
            for m in ("ndcg@10", "precision@10")
        ]
        epochs = "/".join(map(str, r["cold_epochs"])) + " vs " + "/".join(map(str, r["best_epochs"]))
        scales = sorted(set(r.get("cold_scales", [1.0])))
        lines.append(
            f"| {_setting_name(r)} | {r['method']} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {epochs} | {'/'.join(f'{x:g}' for x in scales)} |"
        )
    return [*lines, ""]


def _invocations(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations a results JSON records (its own, for a JSON from before the list existed)."""
    if "invocations" in result:
        return list(result["invocations"])
    keys = ("command", "date", "wall_seconds", "jobs")
    return [{**{k: result[k] for k in keys}, "runs": result["runs_this_invocation"]}]


def _is(cell: dict[str, Any], s: Setting) -> bool:
    """Whether a row's cell (or a summary record) belongs to setting `s`."""
    return Setting(cell["dataset"], cell["protocol"], cell["ranker"], cell["onboarding_noise"]) == s


def _of(records: list[dict[str, Any]], s: Setting) -> list[dict[str, Any]]:
    return [r for r in records if _is(r, s)]


def draw(result: dict[str, Any], out: Path) -> list[str]:
    stem = out.name
    made = []
    path = out.with_name(f"{stem}-auc.png")
    plots.auc_by_method(result["summary"], ORDER, path)
    made.append(path.name)
    if result["loss_curves"]:
        path = out.with_name(f"{stem}-losses.png")
        plots.losses(result["loss_curves"], path)
        made.append(path.name)
    noisy = [r for r in result["summary"] if r["onboarding_noise"] is not None and r["method"] != "control"]
    if noisy:
        points: dict[str, list[tuple[float, Any]]] = {}
        for r in noisy:
            if r["method"] != "oracle":
                points.setdefault(r["method"], []).append((r["onboarding_noise"], r))
        path = out.with_name(f"{stem}-onboarding.png")
        plots.sweep(
            points, path, "noise of the declared genres (0 = clean, 1 = random)", writeup.MIN_HEADROOM
        )
        made.append(path.name)
    if result["fewshot"]:
        fs: dict[str, list[tuple[int, Any]]] = {}
        for r in result["fewshot"]:
            if r["method"] != "control":  # the zero line: lifts are over control at the same n
                fs.setdefault(r["method"], []).append((int(r["protocol"].rsplit("=", 1)[1]), r))
        tuning = Setting(**_setting(result))
        for r in result["summary"]:  # n = 0: the cold-start setting itself
            if _is(r, tuning) and r["method"] in fs:
                fs[r["method"]].append((0, r))
        path = out.with_name(f"{stem}-fewshot.png")
        plots.fewshot(fs, path)
        made.append(path.name)
    return made


def _setting(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result["tuning_setting"].items() if k != "seed"}


def _header(result: dict[str, Any], out: Path, title: str) -> list[str]:
    """Title, machine, the invocations that wrote the results, and a hand-written reading if any."""
    m = result["machine"]
    text = [
        f"# {title}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, torch {m['torch']}. The runs in "
        f"the results file took {result['seconds_all_runs'] / 60:.1f} min summed over worker processes; "
        "the commands that wrote it, and the wall time of each:",
        "",
        *(
            f"- {i['date']} `{i['command']}`: {i['wall_seconds'] / 60:.1f} min, {i['runs']} runs, "
            f"{i['jobs']} worker processes"
            for i in result["invocations"]
        ),
        "",
    ]
    if other := result.get("rows_of_another_rule"):
        text += [
            f"The results file also holds {other} rows kept by another early-stopping rule or trained "
            f"with another budget than this plan's (`select` {result['budget']['train'].get('select')}, "
            f"epochs {result['budget']['train'].get('epochs')}, patience "
            f"{result['budget']['train'].get('patience')}): they are not reported here.",
            "",
        ]
    reading = out.with_name(out.name + "-reading.md")
    if reading.exists():
        text += [reading.read_text().strip(), ""]
    return text


def markdown(result: dict[str, Any], out: Path) -> str:
    summary = result["summary"]
    text = _header(result, out, "Offline benchmark: MAIL against the cold-start baselines")
    text += [
        "## How to read this",
        "",
        "- One split, one ranking tower and one training budget per setting: every method trains with "
        f"the same `TrainConfig` ({_budget(result)}), early-stopped on validation AUC. Behavior = "
        f"a user's earlier {BEHAVIOR[result['budget']['behavior']]}. New users: 40% of users, their "
        "behavior deleted (`mail` protocol: the paper's; their samples still train) or never seen in "
        "training, user id out of vocabulary (`strict`).",
        "- Mean ± std over seeds. lift = paired relative lift over `control` on the same seed; p = paired "
        "t-test across seeds; gap closed = (method - control) / (oracle - control) of the seed means "
        "(`oracle` = the same tower fed new users' real behavior), shown where the oracle's headroom is at "
        f"least {writeup.MIN_HEADROOM} (below, it is noise). R² virtual = R² of the virtual behavior "
        "against the real one for new test users (0 = no better than old users' mean behavior).",
        "- Hyperparameters: every tuned method tries the same number of values of one knob on "
        f"{_setting_name(result['tuning_setting'])}, seed {result['tuning_setting']['seed']}, and keeps the "
        "best validation AUC on new users (validation only; test never chooses). The ranker dropout that "
        "`control` chooses is every method's tower.",
        "",
        "## Hyperparameters tried and chosen",
        "",
        writeup.tuning_table(result["tuning"])
        if result["tuning"]
        else "No tuning in this mode: every method runs its first value.",
        "",
    ]
    text += _blocks(
        result,
        lambda recs: writeup.method_table(recs, ORDER),
        lambda recs: writeup.sweep_table(recs, ORDER, _noise, "noise"),
        lambda settings: _paper(_of(summary, settings[0])) + _fewshot(result),
    )
    text += ["## Plots", ""] + [f"![{p}]({p})" for p in result.get("plots", [])]
    return "\n".join(text) + "\n"


def draw_catalog(result: dict[str, Any], out: Path) -> list[str]:
    stem = out.name
    path = out.with_name(f"{stem}-ndcg.png")
    plots.auc_by_method(result["summary"], ORDER, path, metric="ndcg@10")
    made = [path.name]
    if result["fewshot"]:
        fs: dict[str, list[tuple[int, Any]]] = {}
        for r in result["fewshot"]:
            fs.setdefault(r["method"], []).append((int(r["protocol"].rsplit("=", 1)[1]), r))
        tuning = Setting(**_setting(result))
        for r in result["summary"]:  # n = 0: the cold-start setting itself
            if _is(r, tuning) and r["method"] in fs:
                fs[r["method"]].append((0, r))
        path = out.with_name(f"{stem}-fewshot.png")
        plots.curve(fs, path, "ndcg@10", "new-user NDCG@10, whole catalog")
        made.append(path.name)
    return made


def catalog_markdown(result: dict[str, Any], out: Path) -> str:
    text = _header(
        result, out, "Offline benchmark, catalog task: MAIL against popularity and the cold-start baselines"
    )
    text += [
        "## How to read this",
        "",
        "- The task is the product's: rank the whole catalog for a user. Training: positives are the items "
        "a user rated >= 4, each against 16 never-interacted items drawn afresh each epoch by "
        "popularity^0.75 (sampled softmax, corrected by the sampling probability), 20% of rows shown as "
        "a new user would look (`benchmarks/results/catalog-task.md`: how this was chosen, on validation). "
        f"Every method trains with the same `TrainConfig` ({_budget(result)}), early-stopped on "
        "validation NDCG@10; no method's knob is tuned in this benchmark (each runs its default). A user "
        "with an unknown id and no history is scored with new users' own checkpoint (see 'Two "
        "checkpoints' below); in the runs that record a scale below 1 (the 'scale' column there), with "
        "what the tower learned over its prior scaled by it (`cold-scale.md`).",
        "- Strict protocol: 40% of users are new, never trained on; a quarter of them validate, the "
        "others test, each held out whole. Metrics over the whole catalog (1,682 items on MovieLens): one "
        "case per test user, scored at their first test interaction, against their liked held-out items "
        "(a strict new user: every liked interaction); items an old user is known to have seen are not "
        "ranked. NDCG@10 is the primary metric; AUC = liked test items against 10 sampled never-interacted "
        "items each (recorded in split.json). R² virtual = R² of MAIL's virtual behavior against new test "
        "users' real one (0 = no better than old users' mean behavior); in brackets, a ridge probe's "
        "from the same attributes: what any linear map of them can tell.",
        "- Mean ± std over seeds. vs control / vs popularity = paired relative lift on the same seed, with "
        "the paired t-test p across seeds; gap closed = (method - control) / (oracle - control) of the "
        f"seed means, shown where the oracle's headroom is at least {writeup.MIN_HEADROOM}. `popularity` = "
        "the items most often liked in training, minus what the user has seen: what other engines serve "
        "a cold user.",
        "",
    ]
    fewshot = [
        f"### Few-shot: each new test user's first n in {FEWSHOT_N_CATALOG} interactions known",
        "",
        "The same trained models; the known items are the new user's behavior (clicks, as the "
        "service keeps them), are not ranked and are no longer positives. `popularity` only drops "
        "them. vs control / vs popularity compare at the same n. A user with fewer items known than "
        "the run's `cold_clicks` (6 since it was chosen, `first-clicks.md`; runs from before record "
        "none: 1, no user here) is scored with new users' own checkpoint, as the service scores them; "
        "from there on with the weights kept for everyone.",
        "",
        writeup.catalog_table(
            result["fewshot"], ORDER, lambda r: r["protocol"].rsplit("=", 1)[1].rjust(2), "n"
        ),
        "",
    ]
    text += _blocks(
        result,
        lambda recs: writeup.catalog_table(recs, ORDER),
        lambda recs: writeup.catalog_table(recs, ORDER, _noise, "noise"),
        lambda settings: fewshot if result["fewshot"] else [],
    )
    text += _checkpoints_table(result.get("checkpoints", []))
    text += ["## Plots", ""] + [f"![{p}]({p})" for p in result.get("plots", [])]
    return "\n".join(text) + "\n"


def _blocks(
    result: dict[str, Any],
    table: Callable[[list[dict[str, Any]]], str],
    sweep: Callable[[list[dict[str, Any]]], str],
    after_main: Callable[[list[Setting]], list[str]],
) -> list[str]:
    """A section per block of the plan: a `table` per setting (the onboarding blocks: one `sweep`
    over their noise levels), and `after_main` after the main block; a block whose settings an
    earlier block already showed is skipped."""
    summary = result["summary"]
    text: list[str] = []
    shown: set[Setting] = set()
    for block in result["plan"]:
        settings = [Setting(**s) for s in block["settings"]]
        if shown.issuperset(settings):
            continue  # its rows are in an earlier block's table
        shown.update(settings)
        text += [f"## {block['block']}: {block['about']}", ""]
        if block["block"].startswith("onboarding"):
            text += [
                "Semi-synthetic: each user's declared genres are the top genres of their first 5 "
                "interactions (never tested, not new users' behavior), each replaced by a random genre "
                "with probability = noise. Seeds " + ", ".join(map(str, block["seeds"])) + ".",
                "",
                sweep([r for s in settings for r in _of(summary, s)]),
                "",
            ]
            continue
        for s in settings:
            text += [f"### {_setting_name(s.__dict__)}", "", table(_of(summary, s)), ""]
        if block["block"] == "main":
            text += after_main(settings)
    return text


def _noise(r: dict[str, Any]) -> str:
    return f"{r['onboarding_noise']:g}"


def _budget(result: dict[str, Any]) -> str:
    train = {k: v for k, v in result["budget"]["train"].items() if k != "note"}
    default = TrainConfig()
    return ", ".join(f"{k}={v}" for k, v in train.items()) or (
        f"its defaults: at most {default.epochs} epochs, patience {default.patience}"
    )


def _setting_name(s: dict[str, Any]) -> str:
    noise = s.get("onboarding_noise")
    extra = "" if noise is None else f", declared genres with noise {noise:g}"
    return f"{s['dataset']}, {s['protocol']} protocol, {s['ranker']} ranker{extra}"


def _paper(records: list[dict[str, Any]]) -> list[str]:
    """Our lifts next to the paper's (Alimama, new-user AUC, relative to BaseDNN)."""
    by = {r["method"]: r for r in records}
    lines = [
        "#### Against the paper (new-user AUC, relative lift over the tower without ZST)",
        "",
        "| method | paper (Alimama, BaseDNN) | here |",
        "|---|---|---|",
    ]
    for method in ("mail", "mail-none", "mail-single"):
        ours = by.get(method, {}).get("new_auc_lift_pct")
        here = "–" if ours is None else f"{ours[0]:+.2f}% ± {ours[1]:.2f}"
        lines.append(f"| {method} | {100 * (PAPER[method] / PAPER['base'] - 1):+.2f}% | {here} |")
    return [*lines, ""]


def _fewshot(result: dict[str, Any]) -> list[str]:
    if not result["fewshot"]:
        return []
    return [
        f"### Few-shot: each new test user's first n in {FEWSHOT_N} behavior interactions revealed",
        "",
        "The same trained models, evaluated with the revealed interactions as the new users' only behavior "
        "(never test samples). `mail` = the paper's hard switch (virtual behavior only for empty "
        "histories); `mail-blend` = gate tau / (tau + n); `oracle` = all real behavior.",
        "",
        writeup.sweep_table(result["fewshot"], ORDER, lambda r: r["protocol"].rsplit("=", 1)[1], "n"),
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
