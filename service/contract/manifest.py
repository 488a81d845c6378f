"""The typed `manifest.json`: what export writes (`Manifest.to_dict`) and every reader loads
(`Manifest.from_dict`).

Keys written since format 1 began are required; those added later within format 1 (`task`,
`ranking_metrics`, `ranker_batch`, the batch graph's parity, `precisions`, `default_precision`,
`item_vectors`, `cold_checkpoint`, `item_prior`, `ranker_no_history` and `fill.reading`) read as
their defaults from older bundles.
`to_dict` writes the keys in the order export always wrote them, the later ones only when the
bundle has them (an older manifest round-trips unchanged).

`precisions` names each precision's ranking graphs (`Precision`: files, checksums, agreement with
fp32 measured at export) and `default_precision` the one the service serves unless told otherwise.
A manifest without them has one precision, fp32 (`ranker.onnx`, `ranker_batch.onnx`): see
`service.contract.bundle.Bundle.precisions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from service.contract.features import Encoded, FloatArray, IntArray
from service.contract.signatures import Signature, TensorSpec

RATING_TASK = {"task": "rating"}  # the task of bundles from before the catalog task
FP32 = "fp32"
PRECISIONS = ("fp32", "int8", "fp16")  # what a bundle may hold; fp16 is for CUDA only


@dataclass(frozen=True)
class BehaviorSource:
    """Where the behavior sequence came from and its shape."""

    source: str  # "all" interactions or "clicks" (liked ones)
    length: int  # L
    virtual_slots: int  # K
    onboarding_noise: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BehaviorSource:
        return cls(d["source"], d["length"], d["virtual_slots"], d["onboarding_noise"])


@dataclass(frozen=True)
class Fill:
    """How the virtual behavior is weighed against real history (`blend_gate`)."""

    mode: str  # "hard", "blend" or "off"
    tau: float
    in_training: bool
    # which ranker weights read the virtual behavior: "shared" with real history (the paper's
    # reading) or "own" weights ("own-detached": DIN's own unit, its read training no embedding);
    # model_export.model.RankerConfig.virtual_attention. None: a bundle from before this field,
    # all of them "shared" (`virtual_reading`)
    reading: str | None = None

    @property
    def virtual_reading(self) -> str:
        return self.reading or "shared"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.reading is None:
            del out["reading"]  # an older manifest round-trips unchanged
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fill:
        return cls(d["mode"], d["tau"], d["in_training"], d.get("reading"))


@dataclass(frozen=True)
class Graph:
    """One ONNX file's declared signature and opset."""

    signature: Signature
    opset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.signature.inputs],
            "outputs": [t.to_dict() for t in self.signature.outputs],
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Graph:
        inputs = tuple(TensorSpec.from_dict(t) for t in d["inputs"])
        outputs = tuple(TensorSpec.from_dict(t) for t in d["outputs"])
        return cls(Signature(inputs, outputs), d["opset"])


@dataclass(frozen=True)
class ColdCheckpoint:
    """The weights a user with an unknown id and fewer than `clicks` clicks is scored with, where
    training kept new users' own best epoch apart (`TrainConfig.cold_checkpoint`) or scaled what
    their ranker learned over its prior (`TrainConfig.cold_scale`): a complete bundle of the same
    schema and catalog in the sub-directory `dir`, pinned by its model version."""

    dir: str
    model_version: str
    epoch: int  # the training epoch its weights come from
    # what its learned logit was multiplied by towards the ranker's prior (`TrainConfig.cold_scale`;
    # 1: as trained, and what a bundle from before the setting says)
    scale: float = 1.0
    # it scores a user with an unknown id and fewer clicks than this (`TrainConfig.cold_clicks`;
    # 1: only before the first click, and what a bundle from before the setting says)
    clicks: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColdCheckpoint:
        return cls(
            str(d["dir"]),
            str(d["model_version"]),
            int(d["epoch"]),
            float(d.get("scale", 1.0)),
            int(d.get("clicks", 1)),
        )


@dataclass(frozen=True)
class ItemPrior:
    """The ranker's fixed per-item prior (`RankerConfig.item_prior`: the popular list of the user's
    segment, plus a signup answer's lift) as a table a reader can use without the graph: `file`
    holds (S, I+1) float32 rows, column 0 PAD; `blocks` says how a user's encoded attribute ids
    pick rows, one block (first slot, end slot, first row) per attribute, their rows summed: one
    slot, its id's row (first row + id); several slots (a bag of values), the mean of the rows of
    its ids other than PAD, or the first row where all are PAD; no slots, the first row for
    everyone. No blocks: row 0 for everyone. The graph adds exactly this to the ranker's logit."""

    file: str
    blocks: tuple[tuple[int, int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "blocks": [list(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ItemPrior:
        blocks = tuple((int(a), int(b), int(c)) for a, b, c in d.get("blocks", []))
        return cls(str(d["file"]), blocks)


_Record = TypeVar("_Record")


def _by_field_names(cls: type[_Record], d: Mapping[str, Any]) -> _Record:
    """A flat record whose manifest keys are its field names, each required."""
    return cls(*(d[f.name] for f in fields(cls)))  # type: ignore[arg-type]  # cls is a dataclass


@dataclass(frozen=True)
class BatchParity:
    """ranker_batch.onnx against torch, and against ranker.onnx user by user."""

    users: int
    candidates: int
    scores_max_abs_diff: float
    equals_ranker_exactly: bool
    max_abs_diff_vs_ranker: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchParity:
        return _by_field_names(cls, d)


@dataclass(frozen=True)
class Parity:
    """onnxruntime against torch on real test rows, measured at export."""

    rows: int
    candidate_counts: tuple[int, ...]
    scores_max_abs_diff: float
    virtual_max_abs_diff: float
    ranker_batch: BatchParity | None = None  # None in bundles from before ranker_batch.onnx

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rows": self.rows,
            "candidate_counts": list(self.candidate_counts),
            "scores_max_abs_diff": self.scores_max_abs_diff,
            "virtual_max_abs_diff": self.virtual_max_abs_diff,
        }
        if self.ranker_batch is not None:
            out["ranker_batch"] = asdict(self.ranker_batch)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Parity:
        batch = d.get("ranker_batch")
        return cls(
            d["rows"],
            tuple(d["candidate_counts"]),
            d["scores_max_abs_diff"],
            d["virtual_max_abs_diff"],
            None if batch is None else BatchParity.from_dict(batch),
        )


@dataclass(frozen=True)
class PrecisionParity:
    """A reduced-precision ranker against the fp32 one, measured at export on real test rows:
    score differences, and how far the whole-catalog top 10 agrees (mean share of fp32's top 10
    also in this precision's top 10)."""

    rows: int
    candidates: int  # scored per row: the whole catalog
    scores_max_abs_diff: float
    scores_mean_abs_diff: float
    top10_agreement: float
    batch_scores_max_abs_diff: float | None  # its ranker_batch graph against fp32's, if it has one

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionParity:
        return _by_field_names(cls, d)


@dataclass(frozen=True)
class Precision:
    """One precision's ranking graphs: file names and sha256 (also listed in `files`), the device
    it is for, the tolerance of the golden check (`golden_atol`: the golden scores are fp32's, so a
    reduced precision is held to a looser one; it catches a wrong or corrupt file, it is not the
    quality gate), and its agreement with fp32 (None for fp32 itself)."""

    ranker: str
    ranker_sha256: str
    ranker_batch: str | None
    ranker_batch_sha256: str | None
    device: str  # "any", or "cuda" for a graph only a GPU runs well (fp16)
    golden_atol: float
    parity: PrecisionParity | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["parity"] = None if self.parity is None else asdict(self.parity)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Precision:
        parity = d.get("parity")
        return cls(
            str(d["ranker"]),
            str(d["ranker_sha256"]),
            d.get("ranker_batch"),
            d.get("ranker_batch_sha256"),
            str(d["device"]),
            float(d["golden_atol"]),
            None if parity is None else PrecisionParity.from_dict(parity),
        )


@dataclass(frozen=True, eq=False)
class GoldenCase:
    """One ranker call scored at export; the service recomputes it at load."""

    encoded: Encoded
    gate: float
    candidates: IntArray  # (N,)
    scores: FloatArray  # (N,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_attrs": self.encoded.user_attrs.tolist(),
            "context": self.encoded.context.tolist(),
            "behavior": self.encoded.behavior.tolist(),
            "n_history": self.encoded.n_history,
            "gate": self.gate,
            "candidates": self.candidates.tolist(),
            "scores": self.scores.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GoldenCase:
        encoded = Encoded(
            np.asarray(d["user_attrs"], np.int64),
            np.asarray(d["context"], np.int64),
            np.asarray(d["behavior"], np.int64),
            int(d["n_history"]),
        )
        return cls(
            encoded,
            float(d["gate"]),
            np.asarray(d["candidates"], np.int64),
            np.asarray(d["scores"], np.float32),
        )


@dataclass(frozen=True, eq=False)
class Manifest:
    """manifest.json: what a bundle holds, how it was made, and every file's checksum."""

    format_version: int
    model_version: str  # content_version(files)
    created_at: str
    model: str  # "mail", "control" or "oracle"
    ranker: str  # the ranking tower's kind
    dataset: str
    protocol: str
    split_seed: int
    behavior: BehaviorSource
    fill: Fill
    zero_shot: str | None  # its file; None: a model without the zero-shot tower
    ranker_batch: str | None  # its file; None in bundles from before ranker_batch.onnx
    zero_shot_absent_reason: str | None
    onnx: dict[str, Graph]  # by tower: "ranker", "ranker_batch", "zero_shot", "ranker_no_history"
    task: dict[str, Any]  # the training task, as the run recorded it
    metrics: dict[str, Any]  # the run's test metrics
    ranking_metrics: dict[str, Any] | None
    parity: Parity
    golden: tuple[GoldenCase, ...]
    files: dict[str, str]  # name -> sha256, every file but the manifest
    # by precision name; empty in bundles from before precisions (fp32 only: Bundle.precisions)
    precisions: dict[str, Precision] = field(default_factory=dict)
    default_precision: str = FP32
    item_vectors: str | None = None  # its file; None: no candidate stage (whole-catalog scoring)
    cold_checkpoint: ColdCheckpoint | None = None  # None: every user is scored with one checkpoint
    item_prior: ItemPrior | None = None  # None: the ranker has no prior, or the bundle predates it
    # its file (fp32); None: the ranker has none (DIN) or the bundle predates it
    ranker_no_history: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "model": self.model,
            "ranker": self.ranker,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "split_seed": self.split_seed,
            "behavior": asdict(self.behavior),
            "fill": self.fill.to_dict(),
            "zero_shot": _file(self.zero_shot),
            "ranker_batch": _file(self.ranker_batch),
            "zero_shot_absent_reason": self.zero_shot_absent_reason,
            "onnx": {tower: graph.to_dict() for tower, graph in self.onnx.items()},
            "task": self.task,
            "metrics": self.metrics,
            "ranking_metrics": self.ranking_metrics,
            "parity": self.parity.to_dict(),
            "golden": [case.to_dict() for case in self.golden],
            "files": self.files,
        }
        if self.precisions:
            out["precisions"] = {name: p.to_dict() for name, p in self.precisions.items()}
            out["default_precision"] = self.default_precision
        if self.item_vectors is not None:
            out["item_vectors"] = _file(self.item_vectors)
        if self.cold_checkpoint is not None:
            out["cold_checkpoint"] = asdict(self.cold_checkpoint)
        if self.item_prior is not None:
            out["item_prior"] = self.item_prior.to_dict()
        if self.ranker_no_history is not None:
            out["ranker_no_history"] = _file(self.ranker_no_history)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Raises KeyError, TypeError or ValueError on a malformed manifest."""
        zero_shot, ranker_batch = d["zero_shot"], d.get("ranker_batch")
        item_vectors, cold, prior = d.get("item_vectors"), d.get("cold_checkpoint"), d.get("item_prior")
        no_history = d.get("ranker_no_history")
        return cls(
            format_version=d["format_version"],
            model_version=str(d["model_version"]),
            created_at=d["created_at"],
            model=str(d["model"]),
            ranker=d["ranker"],
            dataset=d["dataset"],
            protocol=d["protocol"],
            split_seed=int(d["split_seed"]),
            behavior=BehaviorSource.from_dict(d["behavior"]),
            fill=Fill.from_dict(d["fill"]),
            zero_shot=None if zero_shot is None else zero_shot["file"],
            ranker_batch=None if ranker_batch is None else ranker_batch["file"],
            zero_shot_absent_reason=d["zero_shot_absent_reason"],
            onnx={tower: Graph.from_dict(g) for tower, g in d["onnx"].items()},
            task=dict(d.get("task", RATING_TASK)),
            metrics=dict(d["metrics"]),
            ranking_metrics=d.get("ranking_metrics"),
            parity=Parity.from_dict(d["parity"]),
            golden=tuple(GoldenCase.from_dict(c) for c in d["golden"]),
            files={str(name): str(digest) for name, digest in dict(d["files"]).items()},
            precisions={str(n): Precision.from_dict(p) for n, p in dict(d.get("precisions", {})).items()},
            default_precision=str(d.get("default_precision", FP32)),
            item_vectors=None if item_vectors is None else item_vectors["file"],
            cold_checkpoint=None if cold is None else ColdCheckpoint.from_dict(cold),
            item_prior=None if prior is None else ItemPrior.from_dict(prior),
            ranker_no_history=None if no_history is None else no_history["file"],
        )


def _file(name: str | None) -> dict[str, str] | None:
    return None if name is None else {"file": name}
