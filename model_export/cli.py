"""`python -m model_export {download,train,export,evaluate}`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("model_export")


def _widths(text: str) -> tuple[int, ...]:
    """`--hidden 256,128` -> (256, 128): positive widths, at least one."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths are integers separated by commas: {text!r}") from None
    if min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths are positive integers: {text!r}")
    return widths


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="co-train the towers on a dataset and write RUN_DIR")
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "book-crossing", "synthetic"])
    p.add_argument("--data-dir", default=None, help="folder with the dataset (or MAILREC_DATA_DIR)")
    p.add_argument(
        "--protocol",
        default="strict",
        choices=["strict", "mail"],
        help="strict: new users never trained on, unknown ids as online (the default, the product's) "
        "| mail: the paper's (new users trained on, their behavior deleted)",
    )
    p.add_argument("--model", default="mail", choices=["mail", "control", "oracle"])
    p.add_argument("--ranker", default="base", choices=["base", "din"])
    p.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        metavar="W[,W...]",
        help="the ranking tower's hidden layers, widest first (default 256,128; narrower towers were "
        "screened on validation and not adopted: benchmarks/results/catalog-task.md)",
    )
    p.add_argument(
        "--virtual-attention",
        choices=["shared", "own", "own-detached"],  # model.VIRTUAL_ATTENTION (torch not imported here)
        default=None,
        help="--model mail: read the virtual behavior with the weights that read real history "
        "(shared, the official code's reading) or with weights of its own (own: BaseDNN's own columns "
        "of the first layer, DIN's second attention unit); own-detached: DIN's own unit without training "
        "the embeddings (BaseDNN: the same as own). Default: own for BaseDNN on the catalog task "
        "(chosen on validation, README 'MAIL's old users'), shared otherwise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default 20)")
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better validation score (default 3)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--align", choices=["mmd", "mse"], default=None, help="ZST alignment loss")
    p.add_argument(
        "--fill",
        choices=["hard", "blend"],
        default="hard",
        help="virtual behavior for empty histories only (paper) or blended by count",
    )
    p.add_argument(
        "--fill-inference-only",
        action="store_true",
        help="virtual behavior only at inference (the official code), not in training",
    )
    p.add_argument(
        "--task",
        choices=["catalog", "rating"],
        default="catalog",
        help="catalog: rank the whole catalog (chosen items vs sampled never-interacted ones; the "
        "product's, default) | rating: liked among rated items (the paper's comparison)",
    )
    p.add_argument("--positives", choices=["liked", "any"], default=None, help="catalog: positives")
    p.add_argument("--negatives", type=int, default=None, help="catalog: sampled negatives per positive")
    p.add_argument(
        "--sampling", choices=["uniform", "popularity"], default=None, help="catalog: negative sampling"
    )
    p.add_argument(
        "--loss",
        choices=["bce", "softmax"],
        default=None,
        help="catalog: bce (each row alone) | softmax (each liked item against its sampled negatives)",
    )
    p.add_argument(
        "--cold-history",
        type=float,
        default=None,
        help="catalog: share of the new-user rows that keep 1-10 recent interactions (a new user after "
        "a few clicks)",
    )
    p.add_argument(
        "--cold-rows",
        type=float,
        default=None,
        help="share of training rows shown as a new user (id unknown, no behavior); default: the task's",
    )
    p.add_argument(
        "--freeze-cold",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="catalog: serve new users the weights of their own best validation epoch, then train on "
        "known users' id embeddings only",
    )
    p.add_argument(
        "--cold-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="catalog: keep the weights of new users' own best validation epoch beside the final ones, "
        "and score a user with an unknown id and few clicks (--cold-clicks) with them (the bundle's "
        "cold checkpoint); "
        "default: on wherever it applies (selection on NDCG, no --freeze-cold)",
    )
    p.add_argument(
        "--cold-scale",
        type=float,
        default=None,
        help="catalog, with a cold checkpoint and an item prior: multiply what the tower learned over "
        "the prior by this (0-1) in the cold checkpoint's weights; "
        "default: the value chosen on validation (benchmarks/results/cold-scale.md)",
    )
    p.add_argument(
        "--cold-clicks",
        type=int,
        default=None,
        help="catalog, with a cold checkpoint: it scores a user with an unknown id and fewer clicks "
        "than this (1: only before the first click); default: the value chosen on validation "
        "(benchmarks/results/first-clicks.md)",
    )
    p.add_argument(
        "--select",
        choices=["ndcg", "ndcg-served", "auc"],
        default=None,
        help="catalog: the checkpoint early stopping keeps, by validation NDCG@10 of the users "
        "those weights will score (ndcg-served, the default: beside a cold checkpoint, the known "
        "users), of all users (ndcg), or by AUC",
    )
    p.add_argument(
        "--item-prior",
        default=None,
        metavar="auto|overall|off|ATTRIBUTE",
        help="the ranker's fixed log-popularity offset on its logit: the popular list of the user's "
        "segment of one attribute, chosen with its shrinkage on validation (auto), or of the named "
        "attribute (one that holds several values, such as declared genres: the mean of its "
        "values' lists), or the overall list; auto also adds a signup answer (an attribute that "
        "holds several values) where validation prefers it; default: auto for the catalog task, "
        "off for the rating task",
    )
    p.add_argument("--behavior-len", type=int, default=32)
    p.add_argument(
        "--behavior",
        choices=["all", "clicks"],
        default="all",
        help="behavior = every earlier rated item, or only earlier clicks",
    )
    p.add_argument(
        "--onboarding-noise",
        type=float,
        default=None,
        help="add declared genres from each user's first interactions, with this noise",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON with 'model' and 'train' sections overriding the defaults",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# the catalog task's own flags: the rating task trains on rated rows with BCE and reads none of them
CATALOG_FLAGS = (
    "positives",
    "negatives",
    "sampling",
    "loss",
    "cold_history",
    "freeze_cold",
    "cold_checkpoint",
    "cold_scale",
    "cold_clicks",
    "select",
)
# TrainConfig fields with a flag of their own (`--cold-rows` sets `cold_rows`)
TRAIN_FLAGS = (
    "epochs",
    "patience",
    "batch_size",
    "lr",
    "positives",
    "negatives",
    "sampling",
    "loss",
    "cold_rows",
    "cold_history",
    "freeze_cold",
    "cold_checkpoint",
    "cold_scale",
    "cold_clicks",
    "select",
)


def _train(args: argparse.Namespace) -> int:
    if args.task == "rating":
        given = [f"--{name.replace('_', '-')}" for name in CATALOG_FLAGS if getattr(args, name) is not None]
        if given:
            raise SystemExit(f"model_export train: {', '.join(given)} only apply to --task catalog")
    from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.pipeline import RunSpec, run
    from model_export.train import TrainConfig

    overrides = json.loads(args.config.read_text()) if args.config else {}
    model_cfg = ModelConfig.from_dict({"model": args.model, **overrides.get("model", {})})
    model_cfg.model = args.model
    model_cfg.ranker = model_cfg.ranker or RankerConfig()
    model_cfg.ranker.kind = args.ranker
    if args.hidden is not None:
        model_cfg.ranker.hidden = args.hidden
    reading = args.virtual_attention
    if reading is None and "virtual_attention" not in overrides.get("model", {}).get("ranker", {}):
        # MAIL on BaseDNN, catalog task: the virtual behavior's own columns (chosen on validation:
        # benchmarks/results/train-budget.md); DIN and the rating task keep the paper's reading
        own = args.model == "mail" and args.ranker == "base" and args.task == "catalog"
        reading = "own" if own else None
    if reading is not None:
        model_cfg.ranker.virtual_attention = reading
    prior = args.item_prior
    if prior is None and "item_prior" not in overrides.get("model", {}).get("ranker", {}):
        prior = "auto" if args.task == "catalog" else "off"
    if prior is not None:
        model_cfg.ranker.item_prior = prior != "off"
        model_cfg.ranker.prior_segment = "" if prior in ("off", "overall") else prior
    model_cfg.fill = args.fill
    model_cfg.fill_train = not args.fill_inference_only
    if args.model == "mail":
        model_cfg.zero_shot = model_cfg.zero_shot or ZeroShotConfig()
        if args.align:
            model_cfg.zero_shot.align = args.align
    else:
        model_cfg.zero_shot = None
    chosen = {
        name: getattr(args, name)
        for name in TRAIN_FLAGS
        if getattr(args, name) is not None  # unset: the config file's value, or TrainConfig's default
    }
    try:
        tcfg = TrainConfig(
            **{**overrides.get("train", {}), **chosen, "task": args.task, "seed": args.seed},
            progress=not args.quiet,
        )
        tcfg.cold_scale_for(model_cfg)  # a scale the model cannot take fails here, not after training
    except ValueError as e:  # an impossible combination of flags, said in the flags' terms
        raise SystemExit(f"model_export train: {e}") from None
    spec = RunSpec(
        dataset=args.dataset,
        data_dir=args.data_dir,
        protocol=args.protocol,
        seed=args.seed,
        behavior_len=args.behavior_len,
        behavior=args.behavior,
        onboarding_noise=args.onboarding_noise,
        model=model_cfg,
        train=tcfg,
    )
    _, report = run(spec, args.out)
    test = report["test"]
    print(f"wrote {args.out} ({report['train_seconds']:.1f}s training)")
    for group in ("new", "old", "all"):
        m, r = test[group], report["ranking"]["test"][group]
        print(
            f"  {group:>3}: NDCG@10 {r['ndcg@10']:.4f}  P@10 {r['precision@10']:.4f}  "
            f"Recall@50 {r['recall@50']:.4f} ({r['users']} users)  AUC {m['auc']:.4f}  "
            f"GAUC {m['gauc']:.4f}  logloss {m['logloss']:.4f}"
        )
    if "diagnostics" in report:
        print(f"  virtual-behavior R^2 (new users): {report['diagnostics']['virtual_r2_new']:.4f}")
    return 0


def _add_download(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("download", help="fetch MovieLens 100K into a local cache and verify it")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default ~/.cache/mailrec)")
    p.add_argument("--source", default=None, help="URL or local path of ml-100k.zip")


def _download(args: argparse.Namespace) -> int:
    from model_export.data import ML100K_URL, download_movielens

    path = download_movielens(args.cache, args.source or ML100K_URL)
    print(f"MovieLens 100K verified in {path}")
    print(f"use: --data-dir {path.parent}")
    return 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="export RUN_DIR to a verified ONNX bundle")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--default-precision",
        choices=["fp32", "int8"],
        default=None,
        help="the ranker precision the bundle marks as default (both are written); default: "
        "fp32, the result of benchmarks/results/quantization.md",
    )


def _export(args: argparse.Namespace) -> int:
    from model_export.export import export_bundle
    from model_export.quantize import DEFAULT_PRECISION

    manifest = export_bundle(args.run, args.out, args.default_precision or DEFAULT_PRECISION)
    print(f"wrote bundle {args.out} (model version {manifest.model_version})")
    parity = manifest.parity
    print(
        f"  parity vs torch: scores {parity.scores_max_abs_diff:.2e}, "
        f"virtual behavior {parity.virtual_max_abs_diff:.2e}"
    )
    for name, precision in manifest.precisions.items():
        if precision.parity is not None:
            q = precision.parity
            where = " (measured on the CPU; served on CUDA only)" if precision.device == "cuda" else ""
            print(
                f"  {name} vs fp32 (whole catalog, {q.rows} rows): scores max {q.scores_max_abs_diff:.2e}, "
                f"mean {q.scores_mean_abs_diff:.2e}, top-10 agreement {q.top10_agreement:.3f}{where}"
            )
    print(f"  default precision: {manifest.default_precision}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="recompute test metrics through onnxruntime alone")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default="auto",
        help="the ranker evaluated: auto = the bundle's default. Only fp32 is held to the run's "
        "metrics.json; a reduced precision's gate is benchmarks/quantization.py",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--retrieve",
        type=int,
        default=None,
        metavar="K",
        help="also rank the cases through the service's candidate stage keeping K rows from its "
        "search (with --probes and --popular): its recall of the whole catalog's top 100 and NDCG",
    )
    # defaults: the service's (service.candidates.DEFAULTS), filled in at run time: help imports no numpy
    p.add_argument(
        "--probes", type=int, help="with --retrieve: the stage's probe rows (default: the service's)"
    )
    p.add_argument(
        "--popular", type=int, help="with --retrieve: the most popular rows kept (default: the service's)"
    )
    p.add_argument(
        "--prior",
        type=int,
        help="with --retrieve: a cold checkpoint's user with no history is ranked over the prior's "
        "first PRIOR rows instead (0: the search; default: the service's)",
    )
    p.add_argument(
        "--prior-clicked",
        type=int,
        help="with --retrieve: the same for one with clicks, fewer than the checkpoint's (0: the "
        "search; default: the service's)",
    )
    p.add_argument(
        "--reveal",
        type=int,
        default=0,
        metavar="N",
        help="test new users with their first N interactions known (strict protocol; the offline "
        "benchmark's few-shot): their AUC and ranking, new users only, not held to the run's metrics",
    )
    p.add_argument("--json", type=Path, default=None, help="write the whole result to this file")


def _evaluate(args: argparse.Namespace) -> int:
    from model_export.evaluate import compare, evaluate_bundle
    from service.candidates import DEFAULTS, RetrieveOptions

    retrieve = None
    if args.retrieve is not None:
        probes = DEFAULTS.probes if args.probes is None else args.probes
        popular = DEFAULTS.popular if args.popular is None else args.popular
        prior = DEFAULTS.prior if args.prior is None else args.prior
        clicked = DEFAULTS.prior_clicked if args.prior_clicked is None else args.prior_clicked
        retrieve = RetrieveOptions(0, args.retrieve, probes, popular, prior, clicked)
    if args.reveal < 0:
        print("error: --reveal: a number of interactions, 0 or more", file=sys.stderr)
        return 2
    try:
        result = evaluate_bundle(
            args.bundle,
            args.data_dir,
            progress=not args.quiet,
            precision=args.precision,
            retrieve=retrieve,
            reveal=args.reveal,
        )
    except ValueError as exc:  # a bundle or split this evaluation cannot run on: say why, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"ranker precision: {result['precision']}")
    if result["revealed"]:
        print(f"test new users with their first {result['revealed']} interactions known:")
    for group in ("new", "old", "all"):
        m = result["test"][group]
        r = result.get("ranking", {}).get(group)
        ranked = f"NDCG@10 {r['ndcg@10']:.4f}  P@10 {r['precision@10']:.4f}  " if r else ""
        print(f"  {group:>3}: {ranked}AUC {m['auc']:.4f}  GAUC {m['gauc']:.4f}  logloss {m['logloss']:.4f}")
    for group, r in result.get("retrieval", {}).items():
        print(
            f"  {group:>3} through the candidate stage ({r['candidates']:.0f} rows): NDCG@10 "
            f"{r['ndcg@10']:.4f}  P@10 {r['precision@10']:.4f}  recall of the whole top 100 "
            f"{r['recall_of_top100']:.4f}"
        )
    if result["revealed"]:
        print("  (the run recorded no metrics with interactions revealed: nothing to compare)")
        return 0
    worst = compare(result)
    print(f"largest difference from the run's metrics.json: {worst:.2e} (scaled; at most 1e-4 passes)")
    if result["precision"] != "fp32":
        print("  (the run's metrics are fp32's: a reduced precision is reported, not held to them)")
        return 0
    return 0 if worst <= 1e-4 else 1


COMMANDS = {"train": _train, "download": _download, "export": _export, "evaluate": _evaluate}


def main(argv: list[str] | None = None) -> int:
    # named as it was called: the console script, or the module
    prog = "mailrec-train" if Path(sys.argv[0]).name == "mailrec-train" else "python -m model_export"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_download, _add_train, _add_export, _add_evaluate):
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from model_export.data import DataError
    from service.contract import ContractError

    try:
        return COMMANDS[args.command](args)
    except (DataError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
