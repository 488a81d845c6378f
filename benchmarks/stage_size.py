"""How small can the candidate stage be? Its agreement with whole-catalog scoring, by size, on
validation users only (no labels: the stage is judged by whether it finds what the whole catalog
would have put first), and what each size costs in-process.

For each bundle and each (probes, candidates, popular) of the grid, every validation new user of
the bundle's split (`validation_new_users`: never trained on, attributes only) and a fixed sample
of old users (their whole click history as behavior, those items excluded as the service excludes
them) is ranked twice through ONNX Runtime: the whole catalog, and the stage as the service runs it
(`service.recommend.retrieve_and_score`: probes, search, rank). Reported: the share of the whole
catalog's top 10 the stage returns in its top 10, how often the two top-10 lists are identical,
the recall of the whole catalog's top 100, the rows the ranker scores and the stage's time per call
(two ranker calls and the search, one thread). Test users are not looked at, so the size chosen
here can then be checked on test (`benchmarks.candidate_quality`) without having been chosen on it.

Then, for bundles with a cold checkpoint and the ranker's prior table, the shorter way the service
takes for a user with no history (`service.candidates.PriorStage`): the validation new users,
scored by the cold checkpoint over the whole catalog and over the prior's first rows plus k, for
each number of rows of `PRIOR_GRID` (`measure_prior`; `--prior-only` skips the search's grid), and
with `--prior-clicks 1 3 5` the same for new users with their first clicks known, whom the cold
checkpoint still scores (their rows: `MAILREC_RETRIEVE_PRIOR_CLICKED`).

    python -m benchmarks.stage_size --data-dir ../shared/data --bundles B1 B2 ...

Results: benchmarks/results/stage-size.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.command import command_line
from benchmarks.serving.run import machine
from model_export import data as datasets
from model_export.evaluate import RequestInputs
from service.candidates import CandidateStage, PriorStage, RetrieveOptions
from service.contract import SPLIT_FILE, load_bundle
from service.inference import SessionOptions, Towers

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# (probes, candidates, popular); the first is the earlier default, the fourth the default it chose
GRID = [(128, 300, 100), (96, 200, 75), (64, 150, 50), (64, 100, 50), (48, 100, 30), (32, 64, 32)]
OLD_USERS = 200  # old users sampled per bundle (fixed seed)
K = 10
TOP = 100
AGREE = 0.995  # the smallest stage whose mean top-10 overlap with the whole catalog is at least this
PRIOR_GRID = (10, 25, 50, 100, 200)  # a cold user's rows from the ranker's prior (MAILREC_RETRIEVE_PRIOR)


def _stage_rows(
    towers: Towers, stage: CandidateStage, call: tuple[Any, Any, float], seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows the stage ranks and their scores, as `service.recommend.retrieve_and_score`."""
    enc, virtual, gate = call
    probe_scores = towers.score(enc, virtual, gate, stage.probes)
    found = stage.search(probe_scores, extra=len(seen) + K)
    rows = np.concatenate([stage.probes, found])
    scores = np.concatenate([probe_scores, towers.score(enc, virtual, gate, found)])
    keep = ~np.isin(rows, seen)
    return rows[keep], scores[keep]


def _top(rows: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    return rows[np.argsort(-scores, kind="stable")[:n]]


def measure(
    bundle_dir: Path, data_dir: str | None, grid: list[tuple[int, int, int]] = GRID
) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    assert bundle.item_vectors_path is not None, f"{bundle_dir} has no item vectors"
    split = json.loads((bundle.path / SPLIT_FILE).read_text())
    raw = datasets.load(bundle.manifest.dataset, data_dir, seed=bundle.manifest.split_seed)
    towers = Towers(bundle, SessionOptions(device="cpu", intra_op_threads=1))
    at = RequestInputs(bundle, towers, raw, split)
    catalog = bundle.catalog
    n = len(catalog)
    all_rows = np.arange(1, n + 1, dtype=np.int64)
    vectors = np.load(bundle.item_vectors_path, allow_pickle=False)
    new = sorted(split["validation_new_users"])
    olds = sorted(u for u in at.histories if u not in at.new_users)
    olds = sorted(np.random.default_rng(0).choice(olds, min(OLD_USERS, len(olds)), replace=False).tolist())
    users = [(u, True) for u in new] + [(u, False) for u in olds]
    calls, seens, wholes = [], [], []
    for user, is_new in users:
        _, enc, virtual, gate = at(user, None)  # the bundle's main towers (no cold checkpoint given)
        call = (enc, virtual, gate)
        seen = np.unique(call[0].behavior[call[0].behavior > 0]) if not is_new else all_rows[:0]
        whole = towers.score(*call, all_rows)
        allowed = np.ones(n, bool)
        allowed[seen - 1] = False
        calls.append(call)
        seens.append(seen)
        wholes.append((all_rows[allowed], whole[allowed]))
    result: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "model": bundle.manifest.model,
        "items": n,
        "users": {"new": len(new), "old": len(olds)},
        "sizes": [],
    }
    for probes, candidates, popular in grid:
        stage = CandidateStage(vectors, catalog.popularity, RetrieveOptions(0, candidates, probes, popular))
        per: dict[str, list[list[float]]] = {"new": [], "old": []}
        for (_, is_new), call, seen, (rows_w, scores_w) in zip(users, calls, seens, wholes, strict=True):
            rows, scores = _stage_rows(towers, stage, call, seen)
            want10, want100 = _top(rows_w, scores_w, K), _top(rows_w, scores_w, TOP)
            got10 = _top(rows, scores, K)
            per["new" if is_new else "old"].append(
                [
                    float(np.isin(got10, want10).mean()),
                    float(np.array_equal(got10, want10)),
                    float(np.isin(want100, rows).mean()),
                    float(len(rows)),
                ]
            )
        # time: the stage for the first 50 new users, 5 passes, median per call
        sample = list(zip(calls, seens, strict=True))[:50]
        times = []
        for _ in range(5):
            for call, seen in sample:
                t = time.perf_counter()
                _stage_rows(towers, stage, call, seen)
                times.append(time.perf_counter() - t)
        row: dict[str, Any] = {
            "probes": probes,
            "candidates": candidates,
            "popular": popular,
            "stage_us_median": round(float(np.median(times)) * 1e6, 1),
        }
        for who, vals in per.items():
            a = np.array(vals)
            row[who] = {
                "top10_overlap": float(a[:, 0].mean()),
                "top10_identical": float(a[:, 1].mean()),
                "recall_of_top100": float(a[:, 2].mean()),
                "rows_ranked": float(a[:, 3].mean()),
            }
        result["sizes"].append(row)
        print(
            f"  {bundle_dir.name} probes {probes} candidates {candidates} popular {popular}: "
            f"new top-10 overlap {row['new']['top10_overlap']:.4f}, old {row['old']['top10_overlap']:.4f}, "
            f"rows {row['new']['rows_ranked']:.0f}, {row['stage_us_median']:.0f} us",
            flush=True,
        )
    # the whole catalog's own cost, same timing
    times = []
    for _ in range(5):
        for call, _seen in list(zip(calls, seens, strict=True))[:50]:
            t = time.perf_counter()
            towers.score(*call, all_rows)
            times.append(time.perf_counter() - t)
    result["whole_catalog_us_median"] = round(float(np.median(times)) * 1e6, 1)
    return result


def measure_prior(
    bundle_dir: Path, data_dir: str | None, grid: tuple[int, ...] = PRIOR_GRID, clicks: int = 0
) -> dict[str, Any] | None:
    """The prior's candidates (`service.candidates.PriorStage`) for the users it serves: validation
    new users, scored by the bundle's cold checkpoint with no history. For each number of rows,
    as the service asks (`MAILREC_RETRIEVE_PRIOR` plus k): the share of the whole catalog's top 10
    in the stage's top 10, identical lists, the recall of the top 100, the rows and the time per
    call (the prior's search and one ranker call, one thread). None: the bundle has no cold
    checkpoint or no prior table.

    `clicks` > 0: the same for validation new users with their first `clicks` interactions known
    (as behavior, excluded from both rankings; users with no further interaction left out), where
    the cold checkpoint still scores them (fewer than its `clicks`): the users whose candidates
    `MAILREC_RETRIEVE_PRIOR_CLICKED` rows of the prior are."""
    bundle = load_bundle(bundle_dir)
    cold_bundle = bundle.cold
    if cold_bundle is None or cold_bundle.item_prior_path is None or cold_bundle.manifest.item_prior is None:
        return None
    split = json.loads((bundle.path / SPLIT_FILE).read_text())
    raw = datasets.load(bundle.manifest.dataset, data_dir, seed=bundle.manifest.split_seed)
    options = SessionOptions(device="cpu", intra_op_threads=1)
    cold = Towers(cold_bundle, options)
    at = RequestInputs(bundle, Towers(bundle, options), raw, split, cold)
    n = len(bundle.catalog)
    all_rows = np.arange(1, n + 1, dtype=np.int64)
    table = np.load(cold_bundle.item_prior_path, allow_pickle=False)
    blocks = cold_bundle.manifest.item_prior.blocks
    calls = []
    for user in sorted(split["validation_new_users"]):
        first = list(at.histories.get(user, ([], []))[0][: clicks + 1])
        if clicks and len(first) <= clicks:
            continue  # no interaction left after the clicks
        towers, enc, virtual, gate = at(user, None, history=first[:clicks] if clicks else None)
        seen = bundle.catalog.rows(first[:clicks])
        if towers is not cold:
            return None  # the checkpoint stops at fewer clicks: the prior is not what scores them
        assert enc.n_history == clicks, f"{user}: {enc.n_history} clicks, not {clicks}"
        rows = all_rows[~np.isin(all_rows, seen)]
        calls.append((enc, virtual, gate, rows, cold.score(enc, virtual, gate, rows), seen))
    result: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "model": bundle.manifest.model,
        "users": len(calls),
        "clicks": clicks,
    }
    result["sizes"] = []
    for size in grid:
        stage = PriorStage(table, blocks, size)
        per = []
        for enc, virtual, gate, candidates, whole, seen in calls:
            rows = stage.search(enc.user_attrs, extra=K + len(seen))  # as the service: k, and the clicks
            rows = rows[~np.isin(rows, seen)]
            scores = cold.score(enc, virtual, gate, rows)
            want10, want100 = _top(candidates, whole, K), _top(candidates, whole, TOP)
            got10 = _top(rows, scores, K)
            per.append(
                [
                    float(np.isin(got10, want10).mean()),
                    float(np.array_equal(got10, want10)),
                    float(np.isin(want100, rows).mean()),
                    float(len(rows)),
                ]
            )
        times = []
        for _ in range(5):
            for enc, virtual, gate, _rows, _whole, seen in calls[:50]:
                t = time.perf_counter()
                cold.score(enc, virtual, gate, stage.search(enc.user_attrs, extra=K + len(seen)))
                times.append(time.perf_counter() - t)
        a = np.array(per)
        result["sizes"].append(
            {
                "prior": size,
                "top10_overlap": float(a[:, 0].mean()),
                "top10_identical": float(a[:, 1].mean()),
                "recall_of_top100": float(a[:, 2].mean()),
                "rows_ranked": float(a[:, 3].mean()),
                "stage_us_median": round(float(np.median(times)) * 1e6, 1),
            }
        )
        print(
            f"  {bundle_dir.name} prior {size}, {clicks} clicks: new top-10 overlap {a[:, 0].mean():.4f}",
            flush=True,
        )
    return result


def choose_prior(results: list[dict[str, Any]]) -> int | None:
    """The fewest prior rows whose mean top-10 overlap is >= AGREE in every bundle measured."""
    if not results:
        return None
    fine = [
        s["prior"]
        for i, s in enumerate(results[0]["sizes"])
        if all(r["sizes"][i]["top10_overlap"] >= AGREE for r in results)
    ]
    return min(fine) if fine else None


def choose(results: list[dict[str, Any]], grid: list[tuple[int, int, int]] = GRID) -> dict[str, Any] | None:
    """The size with the fewest rows whose mean top-10 overlap is >= AGREE for new and for old
    users in every bundle."""
    fine = []
    for i, size in enumerate(grid):
        rows = [r["sizes"][i] for r in results]
        if all(s[who]["top10_overlap"] >= AGREE for s in rows for who in ("new", "old")):
            fine.append((max(s["new"]["rows_ranked"] for s in rows), size))
    if not fine:
        return None
    _, (probes, candidates, popular) = min(fine)
    return {"probes": probes, "candidates": candidates, "popular": popular}


def _prior_table(results: list[dict[str, Any]], chosen: int | None, clicks: bool) -> list[str]:
    """The prior's rows by bundle (and clicks known, `clicks`): a markdown table and the choice."""
    head = "| bundle |" + (" clicks |" if clicks else "") + " prior rows | rows ranked | top-10 overlap "
    lines = ["", head + "| identical | recall@100 | stage us |", "|---|" + "---:|" * (7 if clicks else 6)]
    for r in results:
        for s in r["sizes"]:
            lines.append(
                f"| {Path(r['bundle']).name} ({r['users']} new) |"
                + (f" {r['clicks']} |" if clicks else "")
                + f" {s['prior']} | {s['rows_ranked']:.0f} | {s['top10_overlap']:.4f} "
                f"| {s['top10_identical']:.3f} | {s['recall_of_top100']:.4f} | {s['stage_us_median']:.0f} |"
            )
    return [*lines, "", f"Chosen: {chosen} prior rows" if chosen else "Chosen: none meets the rule"]


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# How small can the candidate stage be? (validation users, no labels)",
        "",
        f"`{out['command']}`, {out['date']}, {out['machine']}",
        "",
        "Top-10 overlap: the share of the whole catalog's top 10 the stage returns in its top 10; "
        "identical: the two top-10 lists equal in order; recall: of the whole catalog's top 100 among "
        "the rows the stage ranks. Time: the stage per call (two ranker calls and the search, one "
        f"thread), median; rule: the fewest rows with mean top-10 overlap >= {AGREE} for new and old "
        "users in every bundle.",
        "",
        "| bundle | probes / candidates / popular | rows (new) | new top-10 overlap | new identical | "
        "new recall@100 | old top-10 overlap | old identical | stage us | whole catalog us |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["results"]:
        for s in r["sizes"]:
            lines.append(
                f"| {Path(r['bundle']).name} ({r['users']['new']} new, {r['users']['old']} old) "
                f"| {s['probes']} / {s['candidates']} / {s['popular']} | {s['new']['rows_ranked']:.0f} "
                f"| {s['new']['top10_overlap']:.4f} | {s['new']['top10_identical']:.3f} "
                f"| {s['new']['recall_of_top100']:.4f} | {s['old']['top10_overlap']:.4f} "
                f"| {s['old']['top10_identical']:.3f} | {s['stage_us_median']:.0f} "
                f"| {r['whole_catalog_us_median']:.0f} |"
            )
    chosen = out["chosen"]
    if out["results"]:
        lines += ["", f"Chosen: {chosen}" if chosen else "Chosen: none of the grid meets the rule"]
    else:  # --prior-only: no search grid was measured
        lines = lines[:4] + ["Only the prior's candidates were measured (`--prior-only`)."]
    priors = out.get("priors") or []
    if priors:
        lines += [
            "",
            "## A cold user's candidates from the ranker's prior",
            "",
            "Validation new users scored by each bundle's cold checkpoint with no history, as the service "
            "serves them (`service.candidates.PriorStage`): the prior's first rows plus k = 10, ranked by "
            "the ranker in one call. Time: the prior's search and that call, one thread, median. Rule: "
            f"the fewest rows with mean top-10 overlap >= {AGREE} in every bundle.",
            *_prior_table(priors, out.get("chosen_prior"), clicks=False),
        ]
    clicked = out.get("prior_clicks") or []
    if clicked:
        lines += [
            "",
            "## New users with their first clicks, still scored by the cold checkpoint",
            "",
            "Validation new users with their first n interactions known (as behavior, excluded from both "
            "rankings; users with no further interaction left out) and fewer than the cold checkpoint's "
            "`clicks`, so its weights score them (the service takes their candidates from the prior too, "
            "`MAILREC_RETRIEVE_PRIOR_CLICKED` rows: this chose them): would the prior's first rows, plus k "
            "and the clicks, keep the whole catalog's top 10 for them? Rule as above (>= "
            f"{AGREE} in every bundle and every n).",
            *_prior_table(clicked, out.get("chosen_prior_clicks"), clicks=True),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", type=Path, nargs="+", required=True)
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=RESULTS / "stage-size")
    parser.add_argument("--prior-only", action="store_true", help="only the prior's candidates")
    parser.add_argument(
        "--prior-clicks",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also the prior's candidates for new users with their first N clicks known (e.g. 1 3 5)",
    )
    args = parser.parse_args(argv)
    results = [] if args.prior_only else [measure(b, args.data_dir) for b in args.bundles]
    priors = [p for b in args.bundles if (p := measure_prior(b, args.data_dir)) is not None]
    clicked = [
        p
        for n in args.prior_clicks
        for b in args.bundles
        if (p := measure_prior(b, args.data_dir, clicks=n)) is not None
    ]
    out = {
        "command": command_line("benchmarks.stage_size", argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "results": results,
        "chosen": choose(results) if results else None,
        "priors": priors,
        "chosen_prior": choose_prior(priors),
        "prior_clicks": clicked,
        "chosen_prior_clicks": choose_prior(clicked),
    }
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    text = markdown(out)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
