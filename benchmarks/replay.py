"""Replay held-out new users through a running service: an offline rehearsal of the online A/B.

    python -m benchmarks.replay --url http://127.0.0.1:8000 --bundle bundles/mail --data-dir DIR

For every new user of the bundle's split (whole-catalog cases recorded in its split.json, with
the liked items they went on to pick), and for every variant of the running experiment (forced
with X-Variant, under a user id of this replay's own, so no replayed user is warm from an
earlier run or another variant), it asks POST /recommend for k items with the user's attributes
and no candidates (the whole catalog, as a new user's first page), and sends each returned item
that the user liked to POST /feedback as a click. It then reads the service's own /metrics before
and after, and prints CTR = clicks / impressions per variant from them, next to the replay's own
count (they must agree), with a bootstrap 95% interval over users and each variant's lift over
the first. Writes benchmarks/results/replay.md and .json (or --out).

Only the service and the bundle's split.json (plus the raw data for the users' attributes) are
read: the replay sees what a client of the service would see.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness.command import command_line
from benchmarks.harness.metrics import metric_by
from model_export import data as datasets
from service.contract import SPLIT_FILE, load_bundle

RESULTS = Path(__file__).resolve().parent / "results"
BOOTSTRAP = 2000


def counters(client: httpx.Client, experiment: str) -> dict[tuple[str, str], float]:
    """(metric, variant) -> value of mailrec_impressions_total / mailrec_clicks_total, summed over
    assignment sources, for `experiment`."""
    text = client.get("/metrics").raise_for_status().text
    return {
        (metric, variant): value
        for metric in ("mailrec_impressions", "mailrec_clicks")
        for variant, value in metric_by(text, f"{metric}_total", "variant", experiment=experiment).items()
    }


def new_user_cases(bundle_dir: Path, data_dir: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The bundle's recorded whole-catalog cases of new users, with their raw attributes."""
    bundle = load_bundle(bundle_dir)
    split = json.loads((bundle.path / SPLIT_FILE).read_text())
    if not split.get("ranking"):
        raise SystemExit(
            f"{bundle_dir}: its split.json has no ranking cases (exported before the catalog task)"
        )
    raw = datasets.load(bundle.manifest.dataset, data_dir, seed=int(split["seed"]))
    derived = split.get("derived_user_attributes", {})
    new = set(split["new_users"])
    cases = []
    for case in split["ranking"]["cases"]:
        user = case["user"]
        if user not in new:
            continue
        attributes = {**raw.users.get(user, {}), **{k: v[user] for k, v in derived.items() if user in v}}
        attributes = {k: v for k, v in attributes.items() if v is not None}
        cases.append({**case, "attributes": attributes})
    return cases[:limit] if limit else cases


def replay(client: httpx.Client, cases: list[dict[str, Any]], variants: list[str], k: int) -> dict[str, Any]:
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]
    per_user: dict[str, list[tuple[int, int]]] = {v: [] for v in variants}  # (impressions, clicks)
    failed = 0
    for case in tqdm(cases, desc="replay", unit="user"):
        liked = set(case["positives"])
        for variant in variants:
            body = {
                "user_id": f"replay-{run}-{variant}-{case['user']}",
                "attributes": case["attributes"],
                "k": k,
            }
            if case.get("timestamp") is not None:
                body["context"] = {"timestamp": case["timestamp"]}
            r = client.post("/recommend", json=body, headers={"X-Variant": variant})
            if r.status_code != 200:
                failed += 1
                continue
            answer = r.json()
            items = [it["item_id"] for it in answer["items"]]
            clicks = 0
            for item in items:
                if item in liked:
                    click = {"impression_id": answer["impression_id"], "item_id": item, "event": "click"}
                    f = client.post("/feedback", json=click)
                    if f.status_code == 202 and f.json().get("status") == "counted":
                        clicks += 1
                    else:
                        failed += 1
            per_user[variant].append((len(items), clicks))
    return {"run": run, "per_user": per_user, "failed": failed}


def bootstrap(
    per_user: dict[str, list[tuple[int, int]]], variants: list[str], seed: int = 0
) -> dict[str, Any]:
    """95% intervals of each variant's CTR and of its lift over the first, resampling users."""
    rng = np.random.default_rng(seed)
    arrays = {v: np.array(per_user[v], np.float64).reshape(-1, 2) for v in variants}
    n = min(len(a) for a in arrays.values())
    idx = rng.integers(0, n, (BOOTSTRAP, n))  # the same users for every variant (paired)
    ctr = {v: a[:n][idx, 1].sum(1) / np.maximum(a[:n][idx, 0].sum(1), 1) for v, a in arrays.items()}
    out: dict[str, Any] = {}
    base = variants[0]
    for v in variants:
        out[v] = {"ctr_95": [float(np.percentile(ctr[v], 2.5)), float(np.percentile(ctr[v], 97.5))]}
        if v != base:
            lift = ctr[v] / np.maximum(ctr[base], 1e-12) - 1
            out[v]["lift_95"] = [float(np.percentile(lift, 2.5)), float(np.percentile(lift, 97.5))]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    parser.add_argument(
        "--bundle", type=Path, default=Path("bundles/mail"), help="a bundle whose split to replay"
    )
    parser.add_argument("--data-dir", default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument(
        "--variants", default=None, help="comma-separated (default: every variant X-Variant allows)"
    )
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--users", type=int, default=None, help="replay only the first N new users")
    parser.add_argument("--out", type=Path, default=RESULTS / "replay")
    args = parser.parse_args(argv)
    cases = new_user_cases(args.bundle, args.data_dir, args.users)
    with httpx.Client(base_url=args.url, timeout=30) as client:
        models = client.get("/models").raise_for_status().json()
        exp = models["experiment"]
        variants = args.variants.split(",") if args.variants else list(exp["override_allowed"])
        what = {m["variant"]: f"{m['model']} {m['model_version']}" for m in models["models"]}
        before = counters(client, exp["name"])
        started = time.perf_counter()
        result = replay(client, cases, variants, args.k)
        seconds = time.perf_counter() - started
        after = counters(client, exp["name"])
    intervals = bootstrap(result["per_user"], variants)
    rows = []
    for v in variants:
        imp = after.get(("mailrec_impressions", v), 0) - before.get(("mailrec_impressions", v), 0)
        clk = after.get(("mailrec_clicks", v), 0) - before.get(("mailrec_clicks", v), 0)
        own = np.array(result["per_user"][v], np.int64).reshape(-1, 2).sum(0)
        rows.append(
            {
                "variant": v,
                "model": what.get(v, "?"),
                "users": len(result["per_user"][v]),
                "impressions": int(imp),
                "clicks": int(clk),
                "ctr": clk / imp if imp else float("nan"),
                "replay_counted": [int(own[0]), int(own[1])],
                **intervals[v],
            }
        )
    report = {
        "command": command_line("benchmarks.replay", argv),
        "date": time.strftime("%Y-%m-%d"),
        "url": args.url,
        "bundle_split": str(args.bundle),
        "k": args.k,
        "new_users": len(cases),
        "failed_calls": result["failed"],
        "seconds": round(seconds, 1),
        "variants": rows,
    }
    text = markdown(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=1))
    args.out.with_name(args.out.name + ".md").write_text(text)
    return 0 if result["failed"] == 0 else 1


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Replay: held-out new users through the running service",
        "",
        f"`{report['command']}` on {report['date']}: {report['new_users']} new users of "
        f"{report['bundle_split']}'s split, k = {report['k']}, whole catalog, every variant forced in turn; "
        f"a click for each returned item the user liked. {report['seconds']:.0f} s, "
        f"{report['failed_calls']} failed calls. CTR from the service's own /metrics "
        "(mailrec_clicks_total / mailrec_impressions_total over the replay); 95% bootstrap intervals "
        f"over users ({BOOTSTRAP} resamples, paired across variants).",
        "",
        "| variant | model | users | impressions | clicks | CTR | CTR 95% | lift over first | lift 95% "
        "| replay's own count |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    first = report["variants"][0]
    for r in report["variants"]:
        lift = "–" if r is first or not first["ctr"] else f"{r['ctr'] / first['ctr'] - 1:+.1%}"
        lo_hi = r.get("lift_95")
        interval = "–" if lo_hi is None else f"{lo_hi[0]:+.1%} – {lo_hi[1]:+.1%}"
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['users']} | {r['impressions']} | {r['clicks']} "
            f"| {r['ctr']:.4f} | {r['ctr_95'][0]:.4f} – {r['ctr_95'][1]:.4f} | {lift} | {interval} "
            f"| {r['replay_counted'][0]} / {r['replay_counted'][1]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
