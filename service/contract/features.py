"""Features: the schema (fields, vocabularies, PAD/OOV ids), the catalog, and `encode()`.

`encode()` is the single function that turns raw user attributes, history and context into the
integer arrays both ONNX graphs take, used for training rows and for live requests alike.

Ids: every field has its own vocabulary; id 0 is PAD (no value; masked, zero embedding), id 1 is
OOV (a value never seen in training), known values start at 2. Items are addressed by their row
in the bundle's catalog; catalog row 0 is the PAD item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from service.contract.errors import ContractError, UnknownField, UnknownItems
from service.contract.transforms import TRANSFORMS

PAD = 0
OOV = 1
N_RESERVED = 2

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

MEMO_TYPES = frozenset({str, int, float, type(None)})
MEMO_SIZE = 4096


@dataclass(frozen=True)
class FieldSpec:
    """One categorical feature: where its raw value comes from and its vocabulary."""

    name: str  # feature name, unique within its group
    source: str  # key of the raw value (attribute name, "timestamp", ...)
    transform: str  # key of TRANSFORMS
    slots: int = 1  # > 1: a multi-valued field (bag), padded with PAD
    vocab: tuple[str, ...] = ()  # token of id 2 + i

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ContractError(f"field {self.name}: unknown transform {self.transform!r}")
        object.__setattr__(self, "_ids", {t: N_RESERVED + i for i, t in enumerate(self.vocab)})
        object.__setattr__(self, "_memo", {})  # (type, raw value) -> ids, for scalar raw values

    @property
    def cardinality(self) -> int:
        """Rows of this field's embedding table (PAD and OOV included)."""
        return N_RESERVED + len(self.vocab)

    def tokens(self, raw: object) -> list[str]:
        return TRANSFORMS[self.transform](raw)

    def encode(self, raw: object) -> list[int]:
        """Raw value -> exactly `slots` ids (PAD when missing, OOV when unseen).

        Scalar values are remembered, keyed by type and value (True and 1 are different inputs):
        live attributes such as age, occupation or hour repeat, and their transform is most of a
        request's encoding. At MEMO_SIZE distinct values the memo starts again.
        """
        memo: dict[tuple[type, object], tuple[int, ...]] = self.__dict__["_memo"]
        key = (type(raw), raw)
        scalar = key[0] in MEMO_TYPES
        if scalar and (hit := memo.get(key)) is not None:
            return list(hit)
        ids: dict[str, int] = self.__dict__["_ids"]
        out = [] if raw is None else [ids.get(t, OOV) for t in self.tokens(raw)]
        out = list(dict.fromkeys(out))[: self.slots]  # a bag: first occurrence of each id
        encoded = (*out, *[PAD] * (self.slots - len(out)))
        if scalar:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = encoded
        return list(encoded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "transform": self.transform,
            "slots": self.slots,
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FieldSpec:
        return cls(d["name"], d["source"], d["transform"], int(d["slots"]), tuple(d["vocab"]))


def build_vocab(tokens: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """Tokens seen at least `min_count` times, most frequent first (ties by token)."""
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    kept = [t for t, c in counts.items() if c >= min_count]
    return tuple(sorted(kept, key=lambda t: (-counts[t], t)))


@dataclass(frozen=True)
class Schema:
    """The features of one trained model: three groups of fields and the behavior shape."""

    user_fields: tuple[FieldSpec, ...]
    item_fields: tuple[FieldSpec, ...]  # item_fields[0] is the item id
    context_fields: tuple[FieldSpec, ...]
    behavior_len: int  # L: most recent items kept, most recent first
    virtual_slots: int  # K: vectors of virtual behavior the zero-shot tower emits
    d_embed: int

    def __post_init__(self) -> None:
        for group in (self.user_fields, self.item_fields, self.context_fields):
            names = [f.name for f in group]
            if len(set(names)) != len(names):
                raise ContractError(f"duplicate field names in {names}")
        if not self.context_fields:
            raise ContractError("at least one context field is required")
        object.__setattr__(self, "_user_keys", frozenset(f.source for f in self.user_fields))
        object.__setattr__(self, "_context_keys", frozenset(f.source for f in self.context_fields))

    @property
    def user_slots(self) -> int:
        return sum(f.slots for f in self.user_fields)

    def user_field_slots(self, name: str) -> slice | None:
        """Columns of the user attribute `name` in the user attribute ids (None: no such field)."""
        start = 0
        for f in self.user_fields:
            if f.name == name:
                return slice(start, start + f.slots)
            start += f.slots
        return None

    @property
    def user_id_slot(self) -> int | None:
        """Column of the user id in the user attribute ids (None: the schema has no user id)."""
        slots = self.user_field_slots("user_id")
        return None if slots is None else slots.start

    def is_unseen(self, user_attrs: IntArray, n_history: int, clicks: int = 1) -> bool:
        """Whether an encoded user (`user_attrs` (1, A)) is one the model never saw: an unknown
        (OOV) id and fewer than `clicks` items of history (1: a new user before any click); the
        user a bundle's cold checkpoint scores, `clicks` its manifest's (training's rule on
        tensors: `model_export.evaluation.unseen`)."""
        slot = self.user_id_slot
        return n_history < clicks and slot is not None and int(user_attrs[0, slot]) == OOV

    @property
    def item_slots(self) -> int:
        return sum(f.slots for f in self.item_fields)

    @property
    def context_slots(self) -> int:
        return sum(f.slots for f in self.context_fields)

    @property
    def user_sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.source for f in self.user_fields))

    def encode_user(self, attributes: Mapping[str, object]) -> IntArray:
        """Raw user attributes (user id under "user_id") -> (A,) ids. Unknown keys are an error."""
        unknown = attributes.keys() - self.__dict__["_user_keys"]
        if unknown:
            raise UnknownField(sorted(unknown), self.user_sources)
        return _encode_fields(self.user_fields, attributes)

    def encode_item(self, attributes: Mapping[str, object]) -> IntArray:
        return _encode_fields(self.item_fields, attributes)

    def encode_context(self, context: Mapping[str, object]) -> IntArray:
        return _encode_fields(self.context_fields, context)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_fields": [f.to_dict() for f in self.user_fields],
            "item_fields": [f.to_dict() for f in self.item_fields],
            "context_fields": [f.to_dict() for f in self.context_fields],
            "behavior_len": self.behavior_len,
            "virtual_slots": self.virtual_slots,
            "d_embed": self.d_embed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        return cls(
            user_fields=tuple(FieldSpec.from_dict(f) for f in d["user_fields"]),
            item_fields=tuple(FieldSpec.from_dict(f) for f in d["item_fields"]),
            context_fields=tuple(FieldSpec.from_dict(f) for f in d["context_fields"]),
            behavior_len=int(d["behavior_len"]),
            virtual_slots=int(d["virtual_slots"]),
            d_embed=int(d["d_embed"]),
        )


def _encode_fields(fields: Sequence[FieldSpec], raw: Mapping[str, object]) -> IntArray:
    ids: list[int] = []
    for f in fields:
        ids.extend(f.encode(raw.get(f.source)))
    return np.asarray(ids, dtype=np.int64)


@dataclass
class Catalog:
    """Items in row order; row 0 is the PAD item. `features[r]` are the item's encoded fields."""

    ids: list[str]  # raw id of rows 1..n
    titles: list[str]
    features: IntArray  # (n + 1, M)
    # liked training interactions of rows 1..n (the popularity a "most popular" variant ranks by);
    # None in bundles from before it was recorded
    popularity: IntArray | None = None
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {item: row for row, item in enumerate(self.ids, start=1)}
        if len(self.index) != len(self.ids):
            raise ContractError("duplicate item ids in catalog")
        if self.popularity is not None and len(self.popularity) != len(self.ids):
            raise ContractError(
                f"catalog popularity has {len(self.popularity)} counts for {len(self.ids)} items"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, schema: Schema, items: Mapping[str, Mapping[str, object]], titles: Mapping[str, str]
    ) -> Catalog:
        ids = list(items)
        rows = [np.zeros(schema.item_slots, np.int64)]
        rows += [schema.encode_item({"item_id": i, **items[i]}) for i in ids]
        return cls(ids, [titles.get(i, "") for i in ids], np.stack(rows))

    def rows(self, item_ids: Sequence[str]) -> IntArray:
        """Raw ids -> catalog rows; every id must be known."""
        index = self.index
        try:  # one pass in C (map over the dict's lookup); the unknown ids are listed only on error
            return np.fromiter(map(index.__getitem__, item_ids), np.int64, len(item_ids))
        except KeyError:
            raise UnknownItems([i for i in item_ids if i not in index]) from None


@dataclass(frozen=True)
class Encoded:
    """Model inputs for one user, batch dimension first."""

    user_attrs: IntArray  # (1, A)
    context: IntArray  # (1, C)
    behavior: IntArray  # (1, L) catalog rows, most recent first, PAD-padded
    n_history: int  # real behavior items kept (0 = cold)

    def with_history(self, rows: IntArray) -> Encoded:
        """The same user and context with this history: catalog rows, oldest first."""
        length = self.behavior.shape[1]
        behavior = behavior_rows(rows, length)[None, :]
        return Encoded(self.user_attrs, self.context, behavior, min(len(rows), length))


def behavior_rows(history_rows: Sequence[int] | IntArray, length: int) -> IntArray:
    """Catalog rows in chronological order (oldest first) -> (L,) most recent first, padded."""
    recent = np.asarray(history_rows, dtype=np.int64)[::-1][:length]
    out = np.zeros(length, np.int64)
    out[: len(recent)] = recent
    return out


def encode(
    schema: Schema,
    catalog: Catalog,
    user_id: str,
    attributes: Mapping[str, object] | None = None,
    history: Sequence[str] = (),
    context: Mapping[str, object] | None = None,
) -> Encoded:
    """The one feature encoder, for training rows and live requests alike.

    `history` is the user's item ids in chronological order (oldest first), all before the moment
    being scored; `context` holds raw context values (for example `{"timestamp": 881250949}`).
    """
    attrs = dict(attributes or {})
    if "user_id" in attrs:
        raise UnknownField(["user_id"], schema.user_sources)
    attrs["user_id"] = user_id
    context = context or {}
    if unknown := context.keys() - schema.__dict__["_context_keys"]:
        raise UnknownField(sorted(unknown), sorted({f.source for f in schema.context_fields}))
    user = schema.encode_user(attrs)[None, :]
    no_history = np.zeros((1, schema.behavior_len), np.int64)
    cold = Encoded(user, schema.encode_context(context)[None, :], no_history, 0)
    return cold.with_history(catalog.rows(list(history))) if len(history) else cold


def blend_gate(n_history: int, mode: str, tau: float) -> float:
    """Weight of the virtual behavior: the paper's hard switch, or a count-based blend."""
    if mode == "hard":
        return 1.0 if n_history == 0 else 0.0
    if mode == "blend":
        return tau / (tau + n_history)
    if mode == "off":
        return 0.0
    raise ContractError(f"unknown fill mode {mode!r}")
