"""Export a training run to a bundle: ONNX towers, schema, catalog, manifest; verified, atomic.

The ranker graph scores one user against N candidates (1 <= N <= the catalog and beyond) in one
call: user-side inputs have batch 1, candidates batch N, and the graph broadcasts (see
`model_export.model`). The catalog's item features are a constant of the graph, so callers send
catalog rows only.

A second ranker graph, `ranker_batch.onnx`, scores several users in one call (user tensors with
batch U, candidates (N,) and `owner` (N,), candidate n belonging to user owner[n]): the service's
micro-batcher merges concurrent requests into it. Names, dtypes, shapes and dynamic axes of the
four graphs come from `service.contract.signatures`. `item_vectors.npy` holds the ranker's own
item side (`Ranker.item_vectors`), which the service's candidate stage searches; `item_prior.npy`
the ranker's fixed prior (`ItemPrior`), from which it takes a cold user's candidates.
`ranker_no_history.onnx` (a BaseDNN tower's) is `ranker.onnx` for a user with no behavior, without
the pooling over it; the service's golden check holds it to `ranker.onnx`'s scores.

Beside them, `ranker_int8.onnx` and `ranker_batch_int8.onnx`: the same graphs with int8 weights
(`model_export.quantize`), compared with fp32 on the run's test rows (recorded in the manifest's
`precisions`, never a failure); the manifest's `default_precision` says which one the service
serves (`quantize.DEFAULT_PRECISION` unless `default_precision` is given).

Export checks itself: onnxruntime against torch on real test rows (`model_export.parity`), then
the service's own validation of the finished bundle (`load_bundle`, every graph's session against
its signature, the golden scores), or it fails. The bundle is written to a temporary sibling
directory and renamed into place, so no reader sees half a bundle.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model_export.checkpoint import METRICS, cold_checkpoint, load_checkpoint
from model_export.model import MailModel, UserInputs
from model_export.parity import SCORE_ATOL, verify_batch_parity, verify_parity
from model_export.quantize import (
    DEFAULT_PRECISION,
    FP16,
    FP16_GOLDEN_ATOL,
    INT8,
    INT8_GOLDEN_ATOL,
    compare_precisions,
    convert_fp16,
    golden_diff,
    quantize_int8,
)
from service.contract import (
    CATALOG_FILE,
    FORMAT_VERSION,
    ITEM_PRIOR_FILE,
    ITEM_VECTORS_FILE,
    MANIFEST,
    RANKER_BATCH_FILE,
    RANKER_FILE,
    RANKER_FILES,
    RANKER_NO_HISTORY_FILE,
    SCHEMA_FILE,
    SPLIT_FILE,
    ZERO_SHOT_FILE,
    BehaviorSource,
    ColdCheckpoint,
    Fill,
    GoldenCase,
    Graph,
    ItemPrior,
    Manifest,
    Parity,
    Precision,
    PrecisionParity,
    Schema,
    Signature,
    content_version,
    load_bundle,
    ranker_batch_signature,
    ranker_no_history_signature,
    ranker_signature,
    sha256_file,
    zero_shot_signature,
)
from service.contract.manifest import RATING_TASK

log = logging.getLogger(__name__)

OPSET = 17


class RankerGraph(nn.Module):
    """The served ranking tower: one user (batch 1) against N candidates -> probabilities (N,);
    given `owner` (N,), several users in one call (user inputs (U, ...), candidate n is user
    owner[n]'s): the two graphs differ only in that input."""

    def __init__(self, model: MailModel) -> None:
        super().__init__()
        self.ranker = model.ranker

    def forward(
        self,
        user_attrs: Tensor,
        context: Tensor,
        behavior: Tensor,
        virtual_behavior: Tensor,
        virtual_gate: Tensor,
        candidates: Tensor,
        owner: Tensor | None = None,
    ) -> Tensor:
        user = UserInputs(user_attrs, context, behavior, virtual_behavior, virtual_gate)
        return torch.sigmoid(self.ranker(user, candidates, owner))


class NoHistoryGraph(nn.Module):
    """`RankerGraph` for one user with no behavior: no `behavior` input, and none of the operators
    that pool it (for 100 candidates about a quarter of the call). The same scores."""

    def __init__(self, model: MailModel) -> None:
        super().__init__()
        self.ranker = model.ranker

    def forward(
        self,
        user_attrs: Tensor,
        context: Tensor,
        virtual_behavior: Tensor,
        virtual_gate: Tensor,
        candidates: Tensor,
    ) -> Tensor:
        empty = torch.zeros((1, 0), dtype=torch.long)  # not read: no behavior
        user = UserInputs(user_attrs, context, empty, virtual_behavior, virtual_gate)
        return torch.sigmoid(self.ranker.forward_no_history(user, candidates))


class ZeroShotGraph(nn.Module):
    """The served zero-shot tower: attribute ids (B, A) -> virtual behavior (B, K, d)."""

    def __init__(self, model: MailModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, user_attrs: Tensor) -> Tensor:
        return self.model.virtual_behavior(user_attrs)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, signature: Signature) -> None:
    # The TorchScript exporter: a static graph with named dynamic axes, in a tenth of the dynamo
    # exporter's time (measured: 0.3 s vs 3.1 s for the ranker) and without its torchvision log
    # noise. torch marks it deprecated; its warnings are silenced for this call only, and
    # `verify_parity` holds the graph to the torch module whichever exporter made it.
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[t.name for t in signature.inputs],
            output_names=[t.name for t in signature.outputs],
            dynamic_axes=signature.dynamic_axes(),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def export_bundle(run_dir: Path, out: Path, default_precision: str = DEFAULT_PRECISION) -> Manifest:
    """Write a verified bundle for RUN_DIR at `out` (replacing one there); returns its manifest.
    `default_precision` (fp32 or int8): the ranker the service serves unless told otherwise.
    A run that kept new users' own checkpoint (`save_run`'s `cold`) gets it as a sub-bundle,
    `cold/`, written and verified the same way (`ColdCheckpoint`)."""
    if default_precision not in RANKER_FILES or default_precision == "fp16":
        raise ValueError(f"default precision {default_precision!r}: fp32 or int8")
    started = time.perf_counter()
    model, ckpt = load_checkpoint(run_dir)
    cold = cold_checkpoint(model, ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a service user must be able to read it
    try:
        sub = None
        if cold is not None:
            (tmp / COLD_DIR).mkdir(mode=0o755)
            sub = _write_bundle(
                cold.model, ckpt, run_dir, tmp / COLD_DIR, default_precision, with_split=False
            )
        manifest = _write_bundle(model, ckpt, run_dir, tmp, default_precision, sub)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s -> %s in %.1fs", run_dir, out, time.perf_counter() - started)
    return manifest


COLD_DIR = "cold"


def _write_bundle(
    model: MailModel,
    ckpt: dict[str, Any],
    run_dir: Path,
    root: Path,
    default_precision: str,
    cold: Manifest | None = None,
    with_split: bool = True,
) -> Manifest:
    """Write `model`'s bundle files and manifest into the directory `root` and validate them as the
    service will; `cold`: the manifest of the sub-bundle already written in `root / COLD_DIR`,
    whose files are listed and whose version is pinned;
    `with_split`: copy the run's split.json (a cold checkpoint's sub-bundle shares its parent's)."""
    schema = Schema.from_dict(ckpt["schema"])
    catalog = ckpt["catalog"]
    features = np.asarray(catalog["features"])
    # The served ranker looks its item side up in tables computed once here (every catalog item's
    # representation and first-layer projection), with its batch norms folded into linear layers
    # and each feature group's tables fused (the zero-shot tower reads the user's fields through
    # those too); parity below holds both graphs to the trained model.
    served = copy.deepcopy(model)
    served.ranker.freeze_for_serving()
    example = _example_inputs(schema)
    _export(RankerGraph(served), example, root / RANKER_FILE, ranker_signature(schema))
    _export(
        RankerGraph(served),
        (  # two users, so that no user-side dimension is traced as a broadcast 1
            *(t.repeat(2, *[1] * (t.dim() - 1)) for t in example[:5]),
            example[5],
            torch.tensor([0, 1, 1]),
        ),
        root / RANKER_BATCH_FILE,
        ranker_batch_signature(schema),
    )
    has_no_history = served.ranker.has_no_history
    if has_no_history:  # the example user without its behavior
        no_history = (*example[:2], *example[3:])
        signature = ranker_no_history_signature(schema)
        _export(NoHistoryGraph(served), no_history, root / RANKER_NO_HISTORY_FILE, signature)
    has_zst = model.zst is not None
    if has_zst:
        _export(ZeroShotGraph(served), (example[0],), root / ZERO_SHOT_FILE, zero_shot_signature(schema))
    n_catalog = len(catalog["ids"])
    zst_path = root / ZERO_SHOT_FILE if has_zst else None
    parity, golden = verify_parity(model, ckpt["parity"], root / RANKER_FILE, zst_path, n_catalog)
    fp32_graphs = (root / RANKER_FILE, root / RANKER_BATCH_FILE)
    batch = verify_batch_parity(model, ckpt["parity"], *fp32_graphs, n_catalog)
    reduced = (model, ckpt["parity"], golden, n_catalog)
    int8_parity, int8_golden = _reduced_precision(fp32_graphs, INT8, quantize_int8, *reduced)
    fp16_parity, fp16_golden = _reduced_precision(fp32_graphs, FP16, convert_fp16, *reduced)
    if fp16_golden > FP16_GOLDEN_ATOL:  # a converter fault, not rounding: no bundle
        raise ValueError(f"the fp16 ranker is {fp16_golden:.2g} off fp32's golden scores")
    (root / SCHEMA_FILE).write_text(json.dumps(schema.to_dict()))
    items = {"ids": catalog["ids"], "titles": catalog["titles"], "features": features.tolist()}
    if catalog.get("popularity") is not None:
        items["popularity"] = np.asarray(catalog["popularity"]).tolist()
    (root / CATALOG_FILE).write_text(json.dumps(items))
    if with_split:
        shutil.copyfile(run_dir / SPLIT_FILE, root / SPLIT_FILE)
    # the candidate stage's item vectors: the served tower's own item side, row 0 PAD
    vectors = served.ranker.item_vectors().numpy().astype(np.float32)
    np.save(root / ITEM_VECTORS_FILE, vectors, allow_pickle=False)
    prior = None
    if served.ranker.item_log_prior is not None:  # the graph's prior as a table: cold users' candidates
        table = served.ranker.item_log_prior.numpy().astype(np.float32)
        np.save(root / ITEM_PRIOR_FILE, table, allow_pickle=False)
        prior = ItemPrior(ITEM_PRIOR_FILE, tuple(served.ranker.prior_blocks))
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file()}
    record = None
    if cold is not None:  # the sub-bundle's files (its manifest aside): this version covers them
        files.update({f"{COLD_DIR}/{name}": digest for name, digest in cold.files.items()})
        record = ColdCheckpoint(
            COLD_DIR,
            cold.model_version,
            int(ckpt["cold_epoch"]),
            float(ckpt.get("cold_scale", 1.0)),
            int(ckpt.get("cold_clicks", 1)),
        )
    parity = replace(parity, ranker_batch=batch)
    precisions = _precisions(
        files,
        {
            INT8: (int8_parity, max(INT8_GOLDEN_ATOL, 2 * int8_golden), "any"),
            FP16: (fp16_parity, FP16_GOLDEN_ATOL, "cuda"),
        },
    )
    manifest = replace(
        _manifest(ckpt, schema, files, has_zst, parity, golden, run_dir),
        precisions=precisions,
        default_precision=default_precision,
        cold_checkpoint=record,
        item_prior=prior,
        ranker_no_history=RANKER_NO_HISTORY_FILE if has_no_history else None,
    )
    (root / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
    _validate(root)
    return manifest


def _reduced_precision(
    fp32: tuple[Path, Path],
    name: str,
    convert: Callable[[Path, Path], None],
    model: MailModel,
    test_rows: dict[str, Any],
    golden: list[GoldenCase],
    n_catalog: int,
) -> tuple[PrecisionParity, float]:
    """Write precision `name`'s two ranker graphs beside fp32's, `convert(src, dst)` each; returns
    their agreement with fp32 on the test rows and their largest difference from the golden scores."""
    ranker, batch = (fp32[0].parent / f for f in RANKER_FILES[name])
    convert(fp32[0], ranker)
    convert(fp32[1], batch)
    parity = compare_precisions(model, test_rows, fp32, (ranker, batch), n_catalog)
    return parity, golden_diff(ranker, batch, golden, model)


def _precisions(
    files: dict[str, str], reduced: dict[str, tuple[PrecisionParity, float, str]]
) -> dict[str, Precision]:
    """The manifest's `precisions`: fp32, and each of `reduced` (name: its parity with fp32, golden
    tolerance, device), each file with its checksum."""
    out = {}
    for name, (parity, atol, device) in {"fp32": (None, SCORE_ATOL, "any"), **reduced}.items():
        ranker, batch = RANKER_FILES[name]
        out[name] = Precision(ranker, files[ranker], batch, files[batch], device, atol, parity)
    return out


def _validate(root: Path) -> None:
    """The service's own validation, before anyone can see the bundle: the bundle contract, every
    graph's session against its signature (the batch graphs included), the golden scores, for each
    precision a CPU serves (fp16's, for CUDA only, were checked against the golden scores above)."""
    from service.inference import SessionOptions, Towers

    bundle = load_bundle(root)
    for precision, spec in bundle.precisions.items():
        if spec.device == "cuda":
            continue
        options = SessionOptions(device="cpu", microbatch="on", ranker_precision=precision)
        Towers(bundle, options).check_golden()


def _example_inputs(schema: Schema) -> tuple[Tensor, ...]:
    return (
        torch.full((1, schema.user_slots), 1, dtype=torch.long),
        torch.full((1, schema.context_slots), 1, dtype=torch.long),
        torch.ones((1, schema.behavior_len), dtype=torch.long),
        torch.zeros((1, schema.virtual_slots, schema.d_embed)),
        torch.zeros((1, 1)),
        torch.arange(1, 4, dtype=torch.long),
    )


def _manifest(
    ckpt: dict[str, Any],
    schema: Schema,
    files: dict[str, str],
    has_zst: bool,
    parity: Parity,
    golden: list[GoldenCase],
    run_dir: Path,
) -> Manifest:
    cfg = ckpt["config"]
    run = ckpt["run"]
    metrics_path = run_dir / METRICS
    report = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"test": ckpt["metrics"]}
    signatures = {"ranker": ranker_signature(schema), "ranker_batch": ranker_batch_signature(schema)}
    if RANKER_NO_HISTORY_FILE in files:
        signatures["ranker_no_history"] = ranker_no_history_signature(schema)
    if has_zst:
        signatures["zero_shot"] = zero_shot_signature(schema)
    return Manifest(
        format_version=FORMAT_VERSION,
        model_version=content_version(files),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        model=cfg["model"],
        ranker=cfg["ranker"]["kind"],
        dataset=run["dataset"],
        protocol=run["protocol"],
        split_seed=run["seed"],
        behavior=BehaviorSource(
            source=run.get("behavior", "all"),
            length=schema.behavior_len,
            virtual_slots=schema.virtual_slots,
            onboarding_noise=run.get("onboarding_noise"),
        ),
        fill=Fill(
            mode=cfg["fill"] if has_zst else "off",
            tau=cfg["blend_tau"],
            in_training=cfg["fill_train"],
            reading=cfg["ranker"].get("virtual_attention", "shared"),
        ),
        zero_shot=ZERO_SHOT_FILE if has_zst else None,
        ranker_batch=RANKER_BATCH_FILE,
        zero_shot_absent_reason=None
        if has_zst
        else f"{cfg['model']} model: no zero-shot tower; cold users get empty behavior",
        onnx={tower: Graph(sig, OPSET) for tower, sig in signatures.items()},
        task=report.get("task", dict(RATING_TASK)),
        metrics=report["test"],
        ranking_metrics=(report.get("ranking") or {}).get("test"),
        parity=parity,
        golden=tuple(golden),
        files=files,
        item_vectors=ITEM_VECTORS_FILE,
    )


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle to `out`; an old bundle there is moved aside, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
