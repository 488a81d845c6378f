"""Scoring cost against catalog size: the whole catalog, and the candidate stage.

    python -m benchmarks.catalog_size --run runs/mail [--sizes 1000,2000,...] [--calls 30]

For each size, a synthetic catalog is made from the run's real one (MovieLens 100K: 1,682 items)
and exported as a bundle by the real export (`model_export.export.export_bundle`): smaller sizes
keep the first items; larger ones append synthetic items, each field of each new item taken from
an independently drawn real item (its item id with that item's bias, prior and popularity, its
genres from another, and so on), so the new items are new combinations of real features. Weights
are the run's. The bundle is loaded as the service loads it (`service.bundles.load_model`, the
candidate stage built at load; its build time is measured) and one new user (attributes only, so
the zero-shot tower's virtual behavior) is served in-process:

* ranker: one `ranker.onnx` call over the whole catalog (what a request without candidates costs
  today),
* stage: the candidate stage's two ranker calls and its search (`service.recommend.retrieve_and_score`'s
  work, without the event loop),
* call: a whole request's compute in-process: encode, zero-shot tower, the stage (or the whole
  catalog below the setting), top-k, the response items; no HTTP, no Redis.

Medians (and p90, and the fastest call, which a shared machine's other work disturbs least) over
--calls calls each, one core (intra-op threads 1, as the service). The reference, measured in the
same run: the whole-catalog ranker call at the real catalog's size.
Writes benchmarks/results/catalog-size.{json,md,png}; `--keep` leaves each size's bundle under --work
(`bundle-SIZE/`), to be served over HTTP (the serving benchmark's `--bundles` takes a folder with
`control/` and `mail/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
USER = {"age": 29, "gender": "F", "occupation": "engineer", "zip": "94110"}


def synthetic_run(run: Path, n_items: int, out: Path, seed: int = 0) -> Path:
    """A copy of RUN_DIR whose checkpoint's catalog has `n_items` items (see the module docstring)."""
    import torch

    from model_export.checkpoint import CHECKPOINT, METRICS
    from service.contract import SPLIT_FILE, Schema

    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    schema = Schema.from_dict(ckpt["schema"])
    catalog = ckpt["catalog"]
    features = np.asarray(catalog["features"])  # (I+1, M)
    real = features.shape[0] - 1
    rng = np.random.default_rng(seed)
    if n_items <= real:
        donor = np.arange(1, n_items + 1)  # rows 1..n of the new catalog come from these rows
        new_features = features[: n_items + 1]
    else:
        extra = n_items - real
        donor = np.r_[np.arange(1, real + 1), rng.integers(1, real + 1, extra)]
        added = features[donor[real:]].copy()  # (extra, M), each field re-drawn below
        start = 0
        for field in schema.item_fields:
            if field.name != "item_id":  # the item id (and its bias, prior, counts) stays the donor's
                added[:, start : start + field.slots] = features[rng.integers(1, real + 1, extra)][
                    :, start : start + field.slots
                ]
            start += field.slots
        new_features = np.concatenate([features, added])
    rows = np.r_[0, donor]  # new row -> old row, PAD kept
    # one set of weights: what is timed is a catalog's size, not which checkpoint scores it
    ckpt.pop("cold_state_dict", None)
    ckpt.pop("cold_epoch", None)
    state = ckpt["state_dict"]
    for name, tensor in list(state.items()):
        if name.endswith("emb.catalog"):
            state[name] = torch.as_tensor(new_features)
        elif name.endswith("item_bias"):
            state[name] = tensor[rows].clone()
        elif name.endswith("item_log_prior"):
            state[name] = tensor[:, rows].clone()
    ids = [catalog["ids"][r - 1] if i < real else f"synthetic-{i}" for i, r in enumerate(donor)]
    ckpt["catalog"] = {
        "ids": ids,
        "titles": [catalog["titles"][r - 1] for r in donor],
        "features": new_features,
        "popularity": np.asarray(catalog["popularity"])[donor - 1],
    }
    parity = ckpt["parity"]  # rows beyond a smaller catalog wrap around into it
    for key in ("item", "behavior"):
        values = np.asarray(parity[key])
        parity[key] = np.where(values > n_items, (values - 1) % n_items + 1, values)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out / CHECKPOINT)
    shutil.copyfile(run / SPLIT_FILE, out / SPLIT_FILE)
    if (run / METRICS).exists():
        shutil.copyfile(run / METRICS, out / METRICS)
    return out


def _times(fn: Callable[[], Any], calls: int) -> list[float]:
    fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _summary(us: list[float]) -> dict[str, float]:
    return {"p50_us": statistics.median(us), "p90_us": float(np.percentile(us, 90)), "min_us": min(us)}


def measure(bundle_dir: Path, calls: int, options: Any) -> dict[str, Any]:
    """The three costs of one bundle (see the module docstring)."""
    from service.bundles import load_model
    from service.contract import encode
    from service.recommend import top_k

    started = time.perf_counter()
    model = load_model("bench", bundle_dir, options)
    load_s = time.perf_counter() - started
    towers, stage = model.towers, model.candidates
    assert stage is not None
    bundle = model.bundle
    context = {"timestamp": int(time.time())}
    known = {f.source for f in bundle.schema.user_fields}  # MovieLens' attributes; other data: those it has
    user = {name: value for name, value in USER.items() if name in known}
    enc = encode(bundle.schema, bundle.catalog, "new-user", user, (), context)
    virtual = towers.virtual_behavior(enc.user_attrs)

    def whole() -> Any:
        return towers.score(enc, virtual, 1.0, model.all_rows)

    def candidates() -> tuple[Any, Any]:
        probe_scores = towers.score(enc, virtual, 1.0, stage.probes)
        found = stage.search(probe_scores)
        return np.concatenate([stage.probes, found]), np.r_[
            probe_scores, towers.score(enc, virtual, 1.0, found)
        ]

    def call() -> list[str]:
        e = encode(bundle.schema, bundle.catalog, "new-user", user, (), context)
        v = towers.virtual_behavior(e.user_attrs)
        probe_scores = towers.score(e, v, 1.0, stage.probes)
        found = stage.search(probe_scores)
        rows = np.concatenate([stage.probes, found])
        scores = np.r_[probe_scores, towers.score(e, v, 1.0, found)]
        best = rows[top_k(scores, rows, 10, model.tie_rank)]
        return [str(i) for i in model.item_ids[best]]

    def whole_call() -> list[str]:
        e = encode(bundle.schema, bundle.catalog, "new-user", user, (), context)
        v = towers.virtual_behavior(e.user_attrs)
        scores = towers.score(e, v, 1.0, model.all_rows)
        best = model.all_rows[top_k(scores, model.all_rows, 10, model.tie_rank)]
        return [str(i) for i in model.item_ids[best]]

    rows, _ = candidates()
    full = whole()
    best100 = np.argsort(-full, kind="stable")[:100] + 1
    return {
        "items": len(bundle.catalog),
        "load_s": load_s,
        "stage_build_s": _stage_build_s(model, options),
        "candidates": len(rows),
        "recall_of_top100": float(np.isin(best100, rows).mean()),
        "ranker_whole": _summary(_times(whole, calls)),
        "stage": _summary(_times(candidates, calls)),
        "call_whole": _summary(_times(whole_call, calls)),
        "call_stage": _summary(_times(call, calls)),
    }


def _stage_build_s(model: Any, options: Any) -> float:
    from service.candidates import candidate_stage

    started = time.perf_counter()
    candidate_stage(model.bundle, options.retrieve)
    return time.perf_counter() - started


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["items"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    series = (
        ("ranker_whole", "ranker over the whole catalog"),
        ("stage", "candidate stage (probes + search + ranker on candidates)"),
        ("call_stage", "whole call in-process, with the stage"),
    )
    for key, label in series:
        ax.plot(x, [r[key]["p50_us"] / 1000 for r in rows], marker="o", label=label)
    ax.axhline(10, color="grey", linestyle=":", label="10 ms target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog items")
    ax.set_ylabel("p50 per call (ms, one core, shared machine)")
    ax.set_title("Scoring cost against catalog size (MovieLens 100K weights)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(t: dict[str, float]) -> str:
    return f"{t['p50_us']:,.0f} ({t['min_us']:,.0f})"


def write_report(result: dict[str, Any], out: Path) -> None:
    rows = result["sizes"]
    ref = result["reference_us"]
    lines = [
        "# Scoring cost against catalog size",
        "",
        f"Command: `{result['command']}` ({result['date']}, onnxruntime {result['onnxruntime']}, "
        f"python {result['python']}). Run: `{result['run']}`. {result['calls']} calls per figure, "
        f"p50 (fastest call) in microseconds, one core. Load average {result['load_before']} before, "
        f"{result['load_after']} after on 2 cores: the machine was shared with other work, which "
        "inflates p50s (the fastest call is the least disturbed figure).",
        "",
        f"Reference, same run: the whole-catalog ranker call at the real catalog's "
        f"{result['reference_items']:,} items: {ref:,.0f} us. Stage options: "
        f"{result['retrieve']}.",
        "",
        "| items | ranker, whole catalog | ratio to reference | candidate stage | rows ranked | "
        "recall of top 100 | whole call, whole catalog | whole call, with the stage | stage build s | "
        "bundle load s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['items']:,} | {_cell(r['ranker_whole'])} | {r['ranker_whole']['p50_us'] / ref:.2f} "
            f"| {_cell(r['stage'])} | {r['candidates']} | {r['recall_of_top100']:.2f} "
            f"| {_cell(r['call_whole'])} | {_cell(r['call_stage'])} "
            f"| {r['stage_build_s']:.2f} | {r['load_s']:.1f} |"
        )
    lines += [
        "",
        "Recall of top 100 here: for one new user, the share of the whole catalog's top 100 (by the "
        "ranker) among the rows the stage ranks; on synthetic items, so only a sanity figure: the "
        "measured recall and NDCG on real users are in the README (`evaluate --retrieve`).",
        "",
        "![cost curve](catalog-size.png)",
        "",
    ]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a run folder (model.pt), e.g. runs/mail")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path(".cache/catalog-size"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep each size's bundle under --work (bundle-SIZE/), to serve it: e.g. the serving "
        "benchmark's --bundles",
    )
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from model_export.export import export_bundle
    from service.candidates import DEFAULTS
    from service.inference import SessionOptions

    retrieve = dataclasses.replace(DEFAULTS, above=0)  # the service's stage, always on
    options = SessionOptions(device="cpu", retrieve=retrieve)
    load_before = os.getloadavg()[0]
    rows = []
    reference: dict[str, Any] | None = None
    real_bundle = args.work / "bundle-real"
    export_bundle(args.run, real_bundle)
    reference = measure(real_bundle, args.calls, options)
    for size in (int(s) for s in args.sizes.split(",")):
        run = synthetic_run(args.run, size, args.work / f"run-{size}")
        bundle = args.work / f"bundle-{size}"
        started = time.perf_counter()
        export_bundle(run, bundle)
        export_s = time.perf_counter() - started
        row = measure(bundle, args.calls, options)
        row["export_s"] = export_s
        rows.append(row)
        print(
            f"{size:>8,} items: ranker {row['ranker_whole']['p50_us']:>10,.0f} us  stage "
            f"{row['stage']['p50_us']:>8,.0f} us  call with stage {row['call_stage']['p50_us']:>8,.0f} us  "
            f"recall@100 {row['recall_of_top100']:.2f}  build {row['stage_build_s']:.2f} s",
            flush=True,
        )
        shutil.rmtree(run, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(bundle, ignore_errors=True)
    result = {
        "command": "python -m benchmarks.catalog_size " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "run": str(args.run),
        "calls": args.calls,
        "retrieve": {k: getattr(retrieve, k) for k in ("candidates", "probes", "popular")},
        "reference_items": reference["items"],
        "reference_us": reference["ranker_whole"]["p50_us"],
        "reference": reference,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "sizes": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "catalog-size.json").write_text(json.dumps(result, indent=2))
    plot(rows, args.out / "catalog-size.png")
    write_report(result, args.out / "catalog-size.md")
    print(f"wrote {args.out / 'catalog-size.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
