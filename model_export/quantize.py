"""The ranker in reduced precision: int8 and fp16 graphs beside the fp32 ones, and their agreement
with fp32.

`quantize_int8` is ONNX Runtime's dynamic quantization (`quantize_dynamic`) of the tower's
per-candidate hidden layers only (`HIDDEN_LAYERS`: BaseDNN's `top`, DIN's `head`): their weights
stored as signed int8 with one scale per output channel (QInt8: in a one-off probe on this 2-core
EPYC VM, twice as fast as QUInt8 weights on the whole catalog, with the same score differences),
activations quantized per call from their own range. Those layers are where the time goes (one
row per candidate through a 256 x 128 matrix). The rest stays fp32: the lookup tables (Gather),
the user's projection (one row per call, so nothing to save), the behavior pooling, and the output
layer, whose error would land on the logit undamped. (A one-layer tower has no such layer: all of
its dense layers are quantized.) Measured on one 3-epoch ML-100K bundle's
`ranker_no_history.onnx` (300 random new users, the whole catalog; 2026-12-03), against every
MatMul/Gemm per tensor, which export did until then: mean score difference from fp32 6.5e-4 ->
3.2e-4, top-10 agreement 0.9947 -> 0.9977, the call as fast (100 candidates x0.63 of fp32 against
x0.70, the whole catalog x0.53 against x0.52).

One consequence of the dynamic scheme: an activation's scale is computed over the whole call, so a
candidate's int8 score depends slightly on the other candidates scored with it (fp32 scores do
not; on a tiny bundle, one item alone and among 299 others differed by 3.6e-5). The differences
are what `compare_precisions` measures, and quality is decided offline (`benchmarks/quantization.py`),
not here: agreement is recorded in the manifest, never a failure.

`convert_fp16` is ONNX Runtime's float16 converter (`onnxruntime.transformers.float16`) with the
inputs and outputs kept float32: weights and arithmetic in fp16, for CUDA (the manifest marks it
`device: cuda`, and the service refuses it on a CPU, where ONNX Runtime runs it about 4x slower
than fp32). Its agreement with fp32 is measured at export on the CPU, whose fp16 kernels need not
round as a GPU's do: a GPU run (`benchmarks/gpu_check.py`) is what tells its real error.

`DEFAULT_PRECISION` is what export marks as the bundle's default: the result of that benchmark
(benchmarks/results/quantization.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.model import MailModel
from model_export.parity import cpu_session, recorded_user_inputs
from service.contract import FP32, GoldenCase, PrecisionParity, ranker_feeds

log = logging.getLogger(__name__)

INT8 = "int8"
FP16 = "fp16"
# benchmarks/results/quantization.md: int8 becomes the default only if it costs nothing measurable
DEFAULT_PRECISION = FP32
# the golden check's least tolerance for int8 (the golden scores are fp32's): it catches a wrong or
# corrupt file, and is widened to twice the difference measured at export where that is larger
INT8_GOLDEN_ATOL = 0.02
FP16_GOLDEN_ATOL = 0.01  # the same for fp16 (about 5e-4 measured on MovieLens' whole catalog)
TOP_K = 10
# the modules whose dense layers run once per candidate: BaseDNN's MLP above the first layer, DIN's
# MLP over [user, behavior, context, item]; `quantize_int8` quantizes only these
HIDDEN_LAYERS = ("top", "head")


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def hidden_layers(src: Path) -> list[str]:
    """The names of the graph's per-candidate hidden layers (`HIDDEN_LAYERS`), each also under the
    name the quantizer's Gemm -> MatMul + Add pass gives it; empty for a tower without one (a
    one-layer `--hidden`)."""
    import onnx

    graph = onnx.load(str(src)).graph
    names = [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and any(f"/{layer}/" in n.name for layer in HIDDEN_LAYERS)
    ]
    return [*names, *(f"{n}_MatMul" for n in names)]


def quantize_int8(src: Path, dst: Path) -> None:
    """The graph at `src` with its hidden layers' weights in int8 (per output channel), written to
    `dst` (same inputs and outputs). A tower with no hidden layer above the first (whose item side
    is a lookup table) gets every dense layer quantized, as all towers did before."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = hidden_layers(src)
    if not nodes:
        log.info("%s has no hidden layer under %s: quantizing every dense layer", src.name, HIDDEN_LAYERS)
    with _quiet_root_logger():
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=nodes or None,
            per_channel=bool(nodes),
        )


def convert_fp16(src: Path, dst: Path) -> None:
    """The graph at `src` in float16, its inputs and outputs still float32, written to `dst`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_root_logger():
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def compare_precisions(
    model: MailModel,
    test_rows: dict[str, Any],
    fp32: tuple[Path, Path | None],
    other: tuple[Path, Path | None],
    n_catalog: int,
) -> PrecisionParity:
    """`other`'s (ranker, ranker_batch) against fp32's on the run's recorded test rows, each row
    scoring the whole catalog: largest and mean absolute score difference, top-10 agreement; the
    batch graphs on three users' candidates together."""
    ref, low = cpu_session(fp32[0]), cpu_session(other[0])
    all_rows = np.arange(1, n_catalog + 1, dtype=np.int64)
    rows = len(test_rows["user_attrs"])
    worst, total, agree = 0.0, 0.0, 0.0
    k = min(TOP_K, n_catalog)
    for i in range(rows):
        feeds = _feeds(model, test_rows, [i], [all_rows])
        a, b = ref.run(None, feeds)[0], low.run(None, feeds)[0]
        diff = np.abs(a - b)
        worst, total = max(worst, float(diff.max())), total + float(diff.mean())
        top_a, top_b = np.argsort(-a, kind="stable")[:k], np.argsort(-b, kind="stable")[:k]
        agree += len(np.intersect1d(top_a, top_b)) / k
    batch_worst = None
    if fp32[1] is not None and other[1] is not None:
        users = list(range(min(rows, 3)))
        rng = np.random.default_rng(2)
        cands = [rng.integers(1, n_catalog + 1, 100).astype(np.int64) for _ in users]
        feeds = _feeds(model, test_rows, users, cands)
        a, b = cpu_session(fp32[1]).run(None, feeds)[0], cpu_session(other[1]).run(None, feeds)[0]
        batch_worst = float(np.max(np.abs(a - b)))
    return PrecisionParity(rows, n_catalog, worst, total / max(rows, 1), agree / max(rows, 1), batch_worst)


def _feeds(
    model: MailModel, test_rows: dict[str, Any], users: list[int], cands: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """Ranker inputs for test rows `users` (one: the one-user graph's; several: the batch graph's)."""
    encoded, gates = zip(*(recorded_user_inputs(test_rows, i, model) for i in users), strict=True)
    with torch.no_grad():
        attrs = torch.from_numpy(np.concatenate([e.user_attrs for e in encoded]))
        virtual = model.virtual_behavior(attrs).numpy().astype(np.float32)
    gate = np.array([[g] for g in gates], np.float32)
    if len(users) == 1:
        return ranker_feeds(encoded, virtual, gate, cands[0])
    owner = np.concatenate([np.full(len(c), u, np.int64) for u, c in enumerate(cands)])
    return ranker_feeds(encoded, virtual, gate, np.concatenate(cands), owner)


def golden_diff(path: Path, batch_path: Path | None, golden: list[GoldenCase], model: MailModel) -> float:
    """Largest difference between the golden (fp32) scores and the graphs at `path` (and
    `batch_path`, two copies of each case in one call) on the golden cases."""
    session = cpu_session(path)
    batch = cpu_session(batch_path) if batch_path is not None else None
    worst = 0.0
    for case in golden:
        enc = case.encoded
        with torch.no_grad():
            virtual = model.virtual_behavior(torch.from_numpy(enc.user_attrs)).numpy().astype(np.float32)
        gates = np.full((1, 1), case.gate, np.float32)
        got = [session.run(None, ranker_feeds((enc,), virtual, gates, case.candidates))[0]]
        if batch is not None:
            n = len(case.candidates)
            owner = np.repeat(np.arange(2, dtype=np.int64), n)
            feeds = ranker_feeds(
                (enc, enc),
                np.concatenate([virtual, virtual]),
                np.concatenate([gates, gates]),
                np.concatenate([case.candidates, case.candidates]),
                owner,
            )
            out = batch.run(None, feeds)[0]
            got += [out[:n], out[n:]]
        for scores in got:
            worst = max(worst, float(np.max(np.abs(scores - case.scores))))
    return worst
