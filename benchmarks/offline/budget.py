"""How long should training run? The epoch cap and early stopping's patience, screened on validation.

    python -m benchmarks.offline.budget [--seeds 0 1 2 3 4] [--jobs 2] [--cap 30] [--patience 3]
    python -m benchmarks.offline.budget --ranker din --out benchmarks/results/train-budget-din

Trains `control` and `mail` exactly as the offline benchmark's main block does (MovieLens 100K,
strict protocol, BaseDNN with its prior, or the DIN block's tower with `--ranker din`; the
catalog task) under the product's early-stopping
rule (`select ndcg-served`), but with a longer cap and patience (default 30 and 3). Training has
no schedule and early stopping only reads validation, so the first epochs of this run *are* the
runs of every shorter rule: each rule (cap, patience) is replayed on the run's own validation
curves (`selection.replay`: the epoch it keeps and new users' checkpoint). After each epoch a
probe (`TrainHooks.after_epoch`) ranks the whole catalog for the test users with that epoch's
weights (old users) and with them scaled as new users' checkpoint is (`cold_scale`), so each
rule's test figures come from the same run; test chooses nothing. Declared before the run: a
longer rule replaces (12, 2) as the default only if its mean validation NDCG@10 of old users
(the score early stopping reads) is at least 2% higher for control and for MAIL alike (a longer
window's maximum is biased upward by the noise of the extra epochs it reads: the margin is for
that), new users' validation NDCG@10 at their checkpoint no lower than 0.5% below; among those
that pass, the shortest. `--models` adds variants beside them (`VARIANTS`), which never enter
that decision; one that would replace the model it names (`CANDIDATES`: MAIL with its own columns
for the virtual behavior, `mail-own-virtual`) is weighed against it at the product's budget by the
same margins, on validation: old users at least 2% higher, new users no lower than 0.5% below.
Writes benchmarks/results/train-budget.jsonl (resumable, one row per model and seed), .json and .md.

Why: the catalog task trained at most 12 epochs and stopped after 2 without a better validation
score (until this screen chose 20 and 3). Both bound: in the offline benchmark's runs most
reached epoch 12, many kept it, and old users' validation NDCG@10 still rose there (MAIL's curve
about an epoch behind control's).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.offline.report import paired_p
from benchmarks.offline.resumable import earlier, header, preamble, resume, write
from benchmarks.offline.resumable import parser as screen_parser
from benchmarks.offline.runner import METHODS
from benchmarks.offline.selection import replay
from model_export.batches import Batches
from model_export.evaluation import rank_part
from model_export.model import MailModel, ModelConfig, RankerConfig, ZeroShotConfig
from model_export.pipeline import Prepared, RunSpec, prepare, run_with_history
from model_export.protocol import TEST
from model_export.train import TrainConfig, TrainHooks

RESULTS = Path(__file__).resolve().parent.parent / "results"
MODELS = ("control", "mail")  # the decision reads these
# diagnostics beside them (`--models`), never part of the decision: MAIL whose training rows shown
# as a new user keep empty behavior, as control's do (virtual behavior at inference only, the
# official code's reading): whether those rows are what MAIL's old users pay for; MAIL whose
# virtual behavior is read by weights of its own (`RankerConfig.virtual_attention` "own"), so those
# rows never train the weights that read real history (the screen of 2026-12-04: README)
VARIANTS: dict[str, Callable[[RankerConfig], ModelConfig]] = {
    "mail-fill-inference": lambda ranker: ModelConfig(
        model="mail", ranker=ranker, zero_shot=ZeroShotConfig(), fill_train=False
    ),
    "mail-own-virtual": lambda ranker: ModelConfig(
        model="mail", ranker=replace(ranker, virtual_attention="own"), zero_shot=ZeroShotConfig()
    ),
}
# a variant that would replace the model it names, by a rule declared before its runs were read
# (2026-12-04): at the product's budget (PRODUCT), on validation, old users' NDCG@10 at least
# VAL_MARGIN above that model's and new users' no lower than NEW_TOLERANCE below
CANDIDATES = {"mail-own-virtual": "mail"}
PRODUCT = (20, 3)
TOWERS = {"base": "BaseDNN", "din": "DIN"}
CURRENT = (12, 2)  # the budget the screen weighs others against (TrainConfig's until 2026-12-03)
RULES = ((12, 2), (12, 3), (20, 2), (20, 3), (30, 2), (30, 3))
VAL_MARGIN = 0.02  # old users' validation NDCG@10, relative, for control and MAIL alike
NEW_TOLERANCE = -0.005  # new users' validation NDCG@10 at their checkpoint, relative
METRICS = ("ndcg@10", "precision@10", "recall@50")


class Probe(TrainHooks):
    """Ranks the whole catalog for the test users after every epoch: old users with that epoch's
    weights, new users with them scaled as new users' checkpoint is (`cold_scale`); one entry per
    epoch in `probes`. It only reads: the run trains as it would without it."""

    def __init__(self, batches: Batches, cold_scale: float) -> None:
        self.batches, self.cold_scale = batches, cold_scale
        self.probes: list[dict[str, Any]] = []

    def after_epoch(self, model: MailModel, record: dict[str, float]) -> None:
        scaled = copy.deepcopy(model).eval()
        if self.cold_scale != 1.0:
            scaled.ranker.scale_learned(self.cold_scale)
        old = rank_part(model, self.batches, TEST)["old"]
        new = rank_part(scaled, self.batches, TEST)["new"]
        self.probes.append({"epoch": record["epoch"], "old": old, "new": new})


def probed_run(spec: RunSpec, prepared: Prepared) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Train `spec` with a `Probe`: (the run's report, the probes, seconds)."""
    probe = Probe(Batches(prepared.encoded, fill_new_users=False), spec.train.cold_scale_for(spec.model))
    started = time.perf_counter()
    _, report, _ = run_with_history(spec, None, prepared, probe)
    return report, probe.probes, time.perf_counter() - started


def run_seed(
    model_name: str, seed: int, data_dir: str | None, cap: int = 30, patience: int = 3, ranker: str = "base"
) -> dict[str, Any]:
    """Train one model as the offline benchmark's main block does, with the rule (cap, patience),
    probing the test ranking after every epoch."""
    from benchmarks.offline.__main__ import CATALOG_RANKER, CATALOG_TRAIN

    train: dict[str, Any] = {**CATALOG_TRAIN, "select": "ndcg-served", "epochs": cap, "patience": patience}
    tcfg = TrainConfig(**train, seed=seed, progress=False)
    cfg = {**METHODS, **VARIANTS}[model_name](replace(CATALOG_RANKER, kind=ranker))
    spec = RunSpec(
        dataset="ml-100k",
        data_dir=data_dir,
        protocol="strict",
        seed=seed,
        behavior="clicks",
        model=cfg,
        train=tcfg,
    )
    report, probes, seconds = probed_run(spec, prepare(spec))
    return {"ranker": ranker, **row(model_name, seed, cap, patience, report, probes, seconds)}


def row(
    model: str,
    seed: int,
    cap: int,
    patience: int,
    report: dict[str, Any],
    probes: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """One line of the results file."""
    return {
        "model": model,
        "seed": seed,
        "cap": cap,
        "patience": patience,
        "seconds": seconds,
        "train_seconds": report["train_seconds"],
        "best_epoch": report["best_epoch"],
        "cold_epoch": report.get("cold_epoch"),
        "epochs": report["epochs"],
        "probes": probes,
        "ranking": report["ranking"],
    }


def at_rule(row: dict[str, Any], cap: int, patience: int) -> dict[str, Any] | None:
    """What rule (cap, patience) gives on this run: epochs run, the kept and the cold epoch, old
    users' validation and test figures at the kept one, new users' at the cold one."""
    curve = row["epochs"][:cap]
    got = replay([e["val_ndcg_served"] for e in curve], [e["val_ndcg_new"] for e in curve], patience, cap)
    if got is None:
        return None
    ran, kept, cold = got
    probe = {p["epoch"]: p for p in row["probes"]}
    return {
        "ran": ran,
        "kept": kept,
        "cold": cold,
        "val_old": curve[kept - 1]["val_ndcg_served"],
        "val_new": curve[cold - 1]["val_ndcg_new"],
        "old": {m: probe[kept]["old"][m] for m in METRICS},
        "new": {m: probe[cold]["new"][m] for m in METRICS},
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and rule: per-seed figures, means, changes against CURRENT (paired p), the check
    that the probe reproduces the run's own report at its rule, and the decision."""
    out: dict[str, Any] = {"models": {}, "check": []}
    present = {r["model"] for r in rows}
    for model in [*(m for m in MODELS if m in present), *sorted(present - set(MODELS))]:
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["seed"])
        rules: dict[str, Any] = {}
        for cap, patience in RULES:
            got = [at_rule(r, cap, patience) for r in rs]
            if any(g is None for g in got):
                continue
            rules[f"{cap},{patience}"] = got
        out["models"][model] = {"seeds": [r["seed"] for r in rs], "rules": rules}
        for r in rs:  # the run's own rule, replayed, against the pipeline's report of it
            g = at_rule(r, r["cap"], r["patience"])
            assert g is not None
            own = r["ranking"]["test"]
            out["check"].append(
                max(abs(g[group]["ndcg@10"] - own[group]["ndcg@10"]) for group in ("old", "new"))
            )
    out["decision"] = decide(out["models"])
    out["candidates"] = decide_candidates(out["models"])
    return out


def _mean(got: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([g[key] for g in got]))


def decide(models: dict[str, Any]) -> dict[str, Any]:
    """The declared rule (module docstring), on validation alone."""
    base = f"{CURRENT[0]},{CURRENT[1]}"
    passing = []
    changes: dict[str, Any] = {}
    models = {k: v for k, v in models.items() if k in MODELS}
    for name in (f"{c},{p}" for c, p in RULES):
        if name == base or not all(name in m["rules"] for m in models.values()):
            continue
        ch = {}
        for model, m in models.items():
            ch[model] = {
                key: _mean(m["rules"][name], key) / _mean(m["rules"][base], key) - 1
                for key in ("val_old", "val_new")
            }
        changes[name] = ch
        if all(c["val_old"] >= VAL_MARGIN and c["val_new"] >= NEW_TOLERANCE for c in ch.values()):
            passing.append(name)
    # the shortest: the lowest cap, then the lowest patience
    chosen = min(passing, key=lambda n: tuple(map(int, n.split(","))), default=base)
    return {"chosen": chosen, "passing": passing, "val_changes": changes}


def decide_candidates(models: dict[str, Any]) -> dict[str, Any]:
    """Each of CANDIDATES trained on the same seeds as the model it would replace: the declared
    rule on validation at PRODUCT, and test's paired changes beside it (which choose nothing)."""
    rule = f"{PRODUCT[0]},{PRODUCT[1]}"
    out: dict[str, Any] = {}
    for variant, against in CANDIDATES.items():
        if (
            variant not in models
            or against not in models
            or models[variant]["seeds"] != models[against]["seeds"]
        ):
            continue
        v, a = models[variant]["rules"].get(rule), models[against]["rules"].get(rule)
        if v is None or a is None:
            continue
        val = {key: _mean(v, key) / _mean(a, key) - 1 for key in ("val_old", "val_new")}
        test = {}
        for group in ("old", "new"):
            t, r = [g[group]["ndcg@10"] for g in v], [g[group]["ndcg@10"] for g in a]
            test[group] = {"change": float(np.mean(np.array(t) / np.array(r) - 1)), "p": paired_p(t, r)}
        out[variant] = {
            "against": against,
            "rule": rule,
            "val_changes": val,
            "test_changes": test,
            "adopted": val["val_old"] >= VAL_MARGIN and val["val_new"] >= NEW_TOLERANCE,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = screen_parser(__doc__, RESULTS / "train-budget")
    parser.add_argument("--cap", type=int, default=30, help="the run's epoch cap (the longest rule read)")
    parser.add_argument("--patience", type=int, default=3, help="the run's patience (the longest rule read)")
    parser.add_argument("--ranker", choices=("base", "din"), default="base", help="the ranking tower")
    parser.add_argument(
        "--models", nargs="+", choices=(*MODELS, *VARIANTS), default=list(MODELS), help="the models to train"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the report, kept across runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    wanted = [(m, s) for s in args.seeds for m in args.models]

    rows, computed = resume(
        args.out,
        wanted,
        partial(run_seed, cap=args.cap, patience=args.patience, ranker=args.ranker),
        args.data_dir,
        args.jobs,
    )
    command = " ".join(["python -m benchmarks.offline.budget", *(argv if argv is not None else sys.argv[1:])])
    result = {
        **header(args.out, command, computed, started),
        "notes": [*earlier(args.out).get("notes", []), *args.note],
        "ranker": args.ranker,
        **summarize(rows),
        "rows": sorted(rows, key=lambda r: (r["model"], r["seed"])),
    }
    write(args.out, result, markdown(result))
    print(f"chosen on validation: cap, patience = {result['decision']['chosen']}")
    return 0


def markdown(result: dict[str, Any]) -> str:
    decision = result["decision"]
    base = f"{CURRENT[0]},{CURRENT[1]}"
    lines = [
        *preamble(
            "Training budget: the epoch cap and patience, chosen on validation "
            f"({TOWERS[result.get('ranker', 'base')]})",
            result,
            __doc__,
        ),
        "",
        f"**Chosen on validation: cap, patience = {decision['chosen']}** (current {base}; rules that "
        f"pass the declared margin: {', '.join(decision['passing']) or 'none'}). The probe reproduces "
        f"each run's own report (largest NDCG@10 difference, old and new users: "
        f"{max(result['check'], default=float('nan')):.1e}).",
        "",
        "Each rule is replayed on each run's validation curves. val = early stopping's score (old "
        "users' validation NDCG@10) at the kept epoch, and new users' at their checkpoint; test = "
        "NDCG@10 at those epochs; change = mean over seeds against the current rule, p = paired "
        "t-test over seeds; epochs = epochs the rule trains (its cost) / the epoch it keeps.",
        "",
        *(line for note in result.get("notes", []) for line in (note, "")),
    ]
    for variant, c in result.get("candidates", {}).items():
        val, test = c["val_changes"], c["test_changes"]
        verdict = "adopted" if c["adopted"] else "not adopted"
        lines += [
            f"**{variant} in place of {c['against']}: {verdict}**, by the rule declared before its runs "
            f"were read (at {c['rule']}, validation: old users at least {100 * VAL_MARGIN:+.0f}%, new "
            f"users no lower than {100 * NEW_TOLERANCE:+.1f}%): old users {100 * val['val_old']:+.1f}%, "
            f"new users {100 * val['val_new']:+.1f}%. On test, for the record (paired by seed): old users "
            f"{100 * test['old']['change']:+.2f}% (p {test['old']['p']:.3f}), new users "
            f"{100 * test['new']['change']:+.2f}% (p {test['new']['p']:.3f}).",
            "",
        ]
    for model, m in result["models"].items():
        rules = m["rules"]
        if base not in rules:
            continue
        ref = rules[base]
        lines += [
            f"## {model}, seeds {', '.join(map(str, m['seeds']))}",
            "",
            "| cap, patience | epochs run / kept (per seed) | val old | change | val new | change "
            "| test old NDCG@10 | change (p) | test new NDCG@10 | change (p) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, got in rules.items():
            cells = []
            for key in ("val_old", "val_new"):
                v = _mean(got, key)
                cells.append(f"{v:.4f} | {100 * (v / _mean(ref, key) - 1):+.1f}%")
            for group in ("old", "new"):
                t = [g[group]["ndcg@10"] for g in got]
                r = [g[group]["ndcg@10"] for g in ref]
                p = "–" if name == base else f"{paired_p(t, r):.3f}"
                cells.append(f"{np.mean(t):.4f} | {100 * (np.mean(t) / np.mean(r) - 1):+.1f}% ({p})")
            epochs = " ".join(f"{g['ran']}/{g['kept']}" for g in got)
            label = f"**{name}**" if name == decision["chosen"] else name
            lines.append(f"| {label} | {epochs} | " + " | ".join(cells) + " |")
        lines.append("")
    models = result["models"]
    for other in (m for m in models if m != "control" and "control" in models):
        title = "MAIL" if other == "mail" else other
        lines += [
            f"## {title} against control, per rule (paired by seed)",
            "",
            "| cap, patience | val old | test old NDCG@10 (p) | test new NDCG@10 (p) |",
            "|---|---:|---:|---:|",
        ]
        for name in models["control"]["rules"]:
            if name not in models[other]["rules"] or models[other]["seeds"] != models["control"]["seeds"]:
                continue
            c, m = models["control"]["rules"][name], models[other]["rules"][name]
            vo = 100 * (_mean(m, "val_old") / _mean(c, "val_old") - 1)
            cells = []
            for group in ("old", "new"):
                t = [g[group]["ndcg@10"] for g in m]
                r = [g[group]["ndcg@10"] for g in c]
                cells.append(f"{100 * np.mean(np.array(t) / np.array(r) - 1):+.2f}% ({paired_p(t, r):.3f})")
            lines.append(f"| {name} | {vo:+.1f}% | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
