"""The ONNX graphs' signatures: tensor names, dtypes and shapes, their input dicts, and the check of
a live session against them.

Four graphs, one table of tensors (`tensor_spec`):

* `zero_shot.onnx`: `user_attrs` (b, A) -> `virtual_behavior` (b, K, d),
* `ranker.onnx`: one user (user-side batch 1) against N candidates -> `scores` (n,),
* `ranker_batch.onnx`: several users (user-side batch u) and `owner` (n,), candidate i belonging to
  user owner[i] -> `scores` (n,),
* `ranker_no_history.onnx`: `ranker.onnx` for a user with no behavior (no `behavior` input): the
  same scores without the behavior pooling's operators, which for 100 candidates are about a
  quarter of the call.

Symbolic dims: "n" = number of candidates, "b" and "u" = batch of users. A graph on disk is
checked on the session ONNX Runtime builds from it (`check_session`): names, dtypes and ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from service.contract.errors import BundleError
from service.contract.features import Encoded, FloatArray, IntArray, Schema

ZST_INPUTS = ("user_attrs",)
ZST_OUTPUTS = ("virtual_behavior",)
RANKER_INPUTS = (
    "user_attrs",
    "context",
    "behavior",
    "virtual_behavior",
    "virtual_gate",
    "candidates",
)
RANKER_OUTPUTS = ("scores",)
RANKER_BATCH_INPUTS = (*RANKER_INPUTS, "owner")
RANKER_NO_HISTORY_INPUTS = tuple(name for name in RANKER_INPUTS if name != "behavior")

# ONNX Runtime's type strings (NodeArg.type) for the dtypes a signature names
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}

Feeds = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


class Signature(NamedTuple):
    """A graph's inputs and outputs, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The symbolic dims of every tensor, as the ONNX exporter takes them."""
        specs = (*self.inputs, *self.outputs)
        axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in specs}
        return {name: dims for name, dims in axes.items() if dims}


def tensor_spec(schema: Schema, name: str, users: int | str) -> TensorSpec:
    """The one place a tensor's dtype and shape are written; `users` is the user-side batch dim."""
    k, d = schema.virtual_slots, schema.d_embed
    specs: dict[str, tuple[str, tuple[int | str, ...]]] = {
        "user_attrs": ("int64", (users, schema.user_slots)),
        "context": ("int64", (users, schema.context_slots)),
        "behavior": ("int64", (users, schema.behavior_len)),
        "virtual_behavior": ("float32", (users, k, d)),
        "virtual_gate": ("float32", (users, 1)),
        "candidates": ("int64", ("n",)),
        "owner": ("int64", ("n",)),
        "scores": ("float32", ("n",)),
    }
    dtype, shape = specs[name]
    return TensorSpec(name, dtype, shape)


def _signature(schema: Schema, inputs: Sequence[str], outputs: Sequence[str], users: int | str) -> Signature:
    return Signature(
        tuple(tensor_spec(schema, n, users) for n in inputs),
        tuple(tensor_spec(schema, n, users) for n in outputs),
    )


def ranker_signature(schema: Schema) -> Signature:
    """One user (batch 1) against N candidates."""
    return _signature(schema, RANKER_INPUTS, RANKER_OUTPUTS, 1)


def ranker_batch_signature(schema: Schema) -> Signature:
    """Several users at once: user-side batch "u", candidates and their owners (N,)."""
    return _signature(schema, RANKER_BATCH_INPUTS, RANKER_OUTPUTS, "u")


def ranker_no_history_signature(schema: Schema) -> Signature:
    """One user with no behavior (batch 1) against N candidates."""
    return _signature(schema, RANKER_NO_HISTORY_INPUTS, RANKER_OUTPUTS, 1)


def zero_shot_signature(schema: Schema) -> Signature:
    return _signature(schema, ZST_INPUTS, ZST_OUTPUTS, "b")


def ranker_feeds(
    users: Sequence[Encoded],
    virtual: FloatArray,
    gates: FloatArray,
    candidates: IntArray,
    owner: IntArray | None = None,
) -> Feeds:
    """The ranker graphs' input dict: one user for ranker.onnx; several, stacked on the batch
    dimension, with `owner` for ranker_batch.onnx. `virtual` is (U, K, d), `gates` (U, 1)."""
    if len(users) == 1:
        user = (users[0].user_attrs, users[0].context, users[0].behavior)
    else:
        user = (
            np.concatenate([u.user_attrs for u in users]),
            np.concatenate([u.context for u in users]),
            np.concatenate([u.behavior for u in users]),
        )
    feeds: Feeds = dict(zip(RANKER_INPUTS, (*user, virtual, gates, candidates), strict=True))
    if owner is not None:
        feeds["owner"] = owner
    return feeds


def ranker_no_history_feeds(
    user: Encoded, virtual: FloatArray, gates: FloatArray, candidates: IntArray
) -> Feeds:
    """`ranker_no_history.onnx`'s input dict: `ranker_feeds` for one user, without its behavior."""
    return {
        "user_attrs": user.user_attrs,
        "context": user.context,
        "virtual_behavior": virtual,
        "virtual_gate": gates,
        "candidates": candidates,
    }


class NodeArg(Protocol):
    """What ONNX Runtime says of one graph input or output (`onnxruntime.NodeArg`)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> Sequence[int | str | None]: ...


class Session(Protocol):
    """The part of an `onnxruntime.InferenceSession` the check reads."""

    def get_inputs(self) -> Sequence[NodeArg]: ...
    def get_outputs(self) -> Sequence[NodeArg]: ...


def _found(args: Sequence[NodeArg]) -> list[tuple[str, str, int]]:
    return [(a.name, ORT_DTYPES.get(a.type, a.type), len(a.shape)) for a in args]


def check_session(session: Session, path: Path, expected: Signature) -> None:
    """The graph ONNX Runtime loaded from `path` has the contract's input and output names, dtypes
    and ranks, in order; raises `BundleError` otherwise."""
    for kind, want, got in (
        ("inputs", expected.inputs, session.get_inputs()),
        ("outputs", expected.outputs, session.get_outputs()),
    ):
        w = [(t.name, t.dtype, len(t.shape)) for t in want]
        g = _found(got)
        if w != g:
            raise BundleError(path.parent, f"{path.name} {kind} are {g}, the contract says {w}")
