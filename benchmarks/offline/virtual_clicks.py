"""Virtual clicks: a new user's behavior made of the items their signup answer's lists rank first.

    python -m benchmarks.offline.virtual_clicks [--seeds 0 1 2 3 4] [--jobs 2]

The oracle (the same tower fed a new user's real behavior) is 16% above control on the declared
genres that carry taste (`onboarding-answer.md`), and the towers' own zero-shot path closes none
of it: MAIL's auto-encoders make nothing of the answer (R² of the virtual behavior about 0). What
the answer does carry is which films the people who gave it liked (`genre-signal.md`). This feeds
those films to the ranker's behavior pathway, as if the new user had clicked them: for each new
user, the first n items of one of their lists (n = 1, 3, 5, 10, 20) become their behavior, most
liked first, and the trained tower ranks the whole catalog as it would for a user with those
clicks. Nothing is retrained; the virtual items stay in the ranking (the user never saw them).

Lists (`model_export.popular`, chosen on validation as the prior chooses them):
- `answer`: the items most liked by training users who gave the user's answer values (the overall
  list times the mean lift of their values);
- `prior`: the same with the user's segment (age, gender, ...): the prior's own list.
Weights: the checkpoint that scores a new user with no click (`cold`, its learned logit at the
shipped scale, `train.COLD_SCALE`) and everyone's (`main`). Which list, n and weights is chosen
on validation new users' NDCG@10, the mean over seeds; test figures choose nothing.

Trains `control` and `mail` as the product does (`cold_scale.train_as_product`) on the
informative answer (`onboarding_answer.ANSWER`: declared genres from each user's first 10
interactions, ranked by lift). Writes benchmarks/results/virtual-clicks.jsonl (resumable, one row
per model and seed), .json and .md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.offline.report import paired_p
from benchmarks.offline.resumable import header, preamble, resume, write
from benchmarks.offline.resumable import parser as screen_parser

RESULTS = Path(__file__).resolve().parent.parent / "results"
MODELS = ("control", "mail")
NS = (1, 3, 5, 10, 20)
SOURCES = ("answer", "prior")
SHIPPED = "cold|0"  # control's page as the product serves it: the cold checkpoint, no click


def virtual_lists(data: Any) -> dict[str, Any]:
    """The lists virtual clicks are drawn from (`SOURCES`), chosen on validation as the prior is:
    the segment (`choose_segment`), then the best-scoring shrinkage of the bag attribute."""
    from model_export import popular

    segment, _ = popular.choose_segment(data, prior=True)
    field = segment.field or ""
    _, _, tried = popular.choose_answer(data, field, segment.shrink)
    key = next(k for k in tried[0] if k.startswith("val_"))
    best = max((t for t in tried if t["answer"]), key=lambda t: t[key])
    answer, shrink = str(best["answer"]), float(best["shrink"])
    return {
        "answer": popular.prior_list(data, "", 0.0, answer, shrink),
        "prior": popular.prior_list(data, field, segment.shrink, answer, shrink),
    }


def virtual_behavior(data: Any, base: Any, table: Any, n: int) -> Any:
    """`base` (the behavior matrix, a tensor) with every new user's rows = the first `n` items of
    their list (`table`, a `PopularList`), most liked first."""
    import torch

    out = base.clone()
    new = np.flatnonzero(data.is_new)
    scores = table.table[table.segment_of[data.user[new]]]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n] + 1  # catalog rows are 1-based
    out[torch.from_numpy(new)] = 0
    out[torch.from_numpy(new)[:, None], torch.arange(n)[None, :]] = torch.from_numpy(top)
    return out


def run_seed(model_name: str, seed: int, data_dir: str | None) -> dict[str, Any]:
    """Train one model; new users' NDCG@10 and P@10 on validation and test for every list, n and
    set of weights, and for the model with no click."""
    import torch

    from benchmarks.offline.cold_scale import scaled, train_as_product
    from benchmarks.offline.onboarding_answer import ANSWER
    from model_export.batches import Batches
    from model_export.evaluation import cold_model, rank_part
    from model_export.protocol import TEST, VAL
    from model_export.train import COLD_SCALE

    prepared, model, history, _, seconds = train_as_product(model_name, seed, data_dir, ANSWER)
    data = prepared.encoded
    batches = Batches(data, fill_new_users=False)
    base = batches.behavior
    cold = cold_model(model, history)
    weights = {"main": scaled(model, 1.0), "cold": scaled(cold.model if cold else model, COLD_SCALE)}
    lists = virtual_lists(data)
    rows: dict[str, Any] = {}

    def figures(m: Any) -> dict[str, dict[str, float]]:
        out = {}
        for part, p in (("val", VAL), ("test", TEST)):
            ranked = rank_part(m, batches, p)["new"]
            out[part] = {"ndcg": ranked["ndcg@10"], "p10": ranked["precision@10"]}
        return out

    with torch.no_grad():
        for w, m in weights.items():
            batches.behavior = base
            rows[f"{w}|0"] = figures(m)  # MAIL: its own virtual behavior fills the empty rows
            for source, table in lists.items():
                for n in NS:
                    batches.behavior = virtual_behavior(data, base, table, n)
                    rows[f"{w}|{n}|{source}"] = figures(m)
    return {
        "model": model_name,
        "seed": seed,
        "seconds": round(seconds, 1),
        "best_epoch": history.best_epoch,
        "cold_epoch": history.cold_epoch,
        "rows": rows,
    }


def choose(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per model: the weights, list and n (or no click) with the best mean validation NDCG@10."""
    out = {}
    for m in MODELS:
        mine = [r for r in rows if r["model"] == m]
        if not mine:
            continue
        keys = list(mine[0]["rows"])
        out[m] = max(keys, key=lambda k: np.mean([r["rows"][k]["val"]["ndcg"] for r in mine]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = screen_parser(__doc__, RESULTS / "virtual-clicks").parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    wanted = [(m, s) for s in args.seeds for m in MODELS]
    rows, computed = resume(args.out, wanted, run_seed, args.data_dir, args.jobs)
    command = " ".join(["python -m benchmarks.offline.virtual_clicks", *(argv or sys.argv[1:])])
    result = {
        **header(args.out, command, computed, started),
        "chosen": choose(rows),
        "rows": sorted(rows, key=lambda r: (r["model"], r["seed"])),
    }
    text = markdown(result, RESULTS / "onboarding-answer.jsonl")
    write(args.out, result, text)
    print(text)
    return 0


def markdown(result: dict[str, Any], lists_rows: Path) -> str:
    """The chosen setting against control as shipped and the most-liked list (from
    `onboarding_answer`'s rows of the same seeds, where they exist), then every setting's means."""
    import json

    rows = result["rows"]
    by = {m: {r["seed"]: r for r in rows if r["model"] == m} for m in MODELS}
    seeds = sorted(set(by["control"]) & set(by["mail"]))
    lists: dict[str, dict[int, dict[str, Any]]] = {}
    if lists_rows.exists():
        for line in lists_rows.read_text().splitlines():
            r = json.loads(line)
            lists.setdefault(r["method"], {})[r["seed"]] = r
    pop = lists.get("popularity", {})
    oracle = lists.get("oracle", {})
    if any(s not in pop for s in seeds):
        pop = {}
    if any(s not in oracle for s in seeds):
        oracle = {}

    def vals(model: str, key: str, part: str = "test", metric: str = "ndcg") -> np.ndarray:
        return np.array([by[model][s]["rows"][key][part][metric] for s in seeds])

    def lift(a: np.ndarray, b: np.ndarray) -> str:
        return f"{100 * np.mean(a / b - 1):+.1f}% ({paired_p(list(a), list(b)):.3f})"

    control = vals("control", SHIPPED)
    lines = [
        *preamble("Virtual clicks: a new user's behavior from their signup answer's lists", result, __doc__),
        "",
        f"Seeds {', '.join(map(str, seeds))}; new users' test figures over the whole catalog (strict "
        "protocol); vs = paired relative lift on the same seed, p = paired t-test over seeds; control = "
        f"control as the product serves a new user (`{SHIPPED}`: cold checkpoint, no click); popularity "
        "and oracle from `onboarding-answer.jsonl` (the same seeds and split); gap closed = (method - "
        "control) / (oracle - control) of the seed means. Keys: weights|n|list.",
        "",
        "| model | chosen on validation | new NDCG@10 | vs control (p) | vs popularity (p) | gap closed "
        "| new P@10 | P@10 vs popularity (p) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, key in result["chosen"].items():
        if not seeds:
            break
        ndcg, p10 = vals(m, key), vals(m, key, metric="p10")
        popn = np.array([pop[s]["test"]["ndcg"] for s in seeds]) if pop else None
        popp = np.array([pop[s]["test"]["p10"] for s in seeds]) if pop else None
        orc = np.array([oracle[s]["test"]["ndcg"] for s in seeds]) if oracle else None
        closed = (
            f"{100 * (ndcg.mean() - control.mean()) / (orc.mean() - control.mean()):.0f}%"
            if orc is not None
            else "–"
        )
        lines.append(
            f"| {m} | `{key}` | {ndcg.mean():.4f} ± {ndcg.std():.4f} | {lift(ndcg, control)} | "
            f"{lift(ndcg, popn) if popn is not None else '–'} | {closed} | {p10.mean():.4f} | "
            f"{lift(p10, popp) if popp is not None else '–'} |"
        )
    lines += [
        "",
        "Every setting, mean over seeds (validation / test new-user NDCG@10; test vs control as shipped):",
        "",
        "| key | control val | control test | control vs shipped | mail val | mail test | mail vs shipped |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = list(rows[0]["rows"]) if rows else []
    for key in keys:
        if not seeds:
            break
        cells = []
        for m in MODELS:
            cells += [
                f"{vals(m, key, 'val').mean():.4f}",
                f"{vals(m, key).mean():.4f}",
                lift(vals(m, key), control),
            ]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
