"""The one contract between training (`model_export`) and serving (`service`).

Standard library and numpy only: the service imports it without torch, and `model_export`
imports it so that nothing about features is written twice. It defines

* the feature schema (fields, raw-value transforms, vocabularies, PAD/OOV ids),
* `encode()`, the single function that turns raw user attributes, history and context into the
  integer arrays both ONNX graphs take, used for training rows and for live requests alike,
* the ONNX input/output names and shapes of the two towers,
* the bundle layout (`manifest.json` and the files it lists) and `load_bundle()`, which refuses a
  bundle whose files, checksums, format version or ONNX signatures disagree with its manifest.

Format 1 has one optional file: `ranker_batch.onnx`, the ranking tower for several users in one
call (user tensors with batch U, `candidates` (N,), `owner` (N,): candidate n belongs to user
owner[n]), used by the service's micro-batcher. A manifest lists it under "ranker_batch"; bundles
without it load as before, and services that predate it ignore it (it is checksummed like every
listed file), so the format version did not change.

Ids: every field has its own vocabulary; id 0 is PAD (no value; masked, zero embedding), id 1 is
OOV (a value never seen in training), known values start at 2. Items are addressed by their row
in the bundle's catalog; catalog row 0 is the PAD item.

Errors (all `ContractError`):

* ContractError
  x BundleError       a bundle is missing a file, a checksum or signature disagrees, unknown format
  x UnknownField      a request names an attribute the bundle does not know
  x UnknownItems      item ids that are not in the catalog
  x BadValue          a raw value that cannot be read (for example an age that is not a number)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
PAD = 0
OOV = 1
N_RESERVED = 2

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.json"
CATALOG_FILE = "catalog.json"
SPLIT_FILE = "split.json"
RANKER_FILE = "ranker.onnx"
RANKER_BATCH_FILE = "ranker_batch.onnx"
ZERO_SHOT_FILE = "zero_shot.onnx"

# ONNX graph signatures. Symbolic dims: "n" = number of candidates, "b" = batch of users.
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


class ContractError(Exception):
    """A violation of the training/serving contract."""


class BundleError(ContractError):
    """A bundle on disk that must not be served."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"bad bundle {path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UnknownField(ContractError):
    def __init__(self, names: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(f"unknown attribute(s) {sorted(names)}; this model knows {sorted(known)}")
        self.names = sorted(names)
        self.known = sorted(known)


class UnknownItems(ContractError):
    def __init__(self, ids: Sequence[str]) -> None:
        shown = list(ids)[:20]
        more = f" (+{len(ids) - 20} more)" if len(ids) > 20 else ""
        super().__init__(f"unknown item id(s) {shown}{more}")
        self.ids = list(ids)


class BadValue(ContractError):
    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"attribute {name!r}: cannot read {value!r}, expected {expected}")
        self.name = name


# --- raw value -> tokens ------------------------------------------------------------------------

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups, applied to raw ages


def _text(value: object) -> list[str]:
    token = str(value).strip().lower()
    return [token] if token else []


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise BadValue(name, value, "a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadValue(name, value, "a number") from None
    if not math.isfinite(number):
        raise BadValue(name, value, "a finite number")
    return number


def _age_bucket(value: object) -> list[str]:
    age = _number("age", value)
    if age <= 0:
        return []  # Book-Crossing and MovieLens use 0 for "unknown"
    for lo, hi in zip((0, *AGE_EDGES), AGE_EDGES, strict=False):
        if age < hi:
            return [f"{lo}-{hi - 1}"]
    return [f"{AGE_EDGES[-1]}+"]


def _zip_region(value: object) -> list[str]:
    text = str(value).strip()
    if not text:
        return []
    return [text[0]] if text[0].isdigit() else ["non-us"]


def _location_parts(value: object) -> list[str]:
    return [p.strip().lower() for p in str(value).split(",")]


def _country(value: object) -> list[str]:
    country = _location_parts(value)[-1]
    return [country] if country and country != "n/a" else []


def _region(value: object) -> list[str]:
    parts = _location_parts(value)
    if len(parts) < 2 or not parts[-2] or not parts[-1] or parts[-2] == "n/a":
        return []
    return [f"{parts[-2]}, {parts[-1]}"]


def _decade(value: object) -> list[str]:
    try:
        year = int(_number("year", value))
    except BadValue:
        return []
    return [f"{year // 10 * 10}s"] if 1000 <= year <= 2100 else []


def _utc(value: object) -> time.struct_time:
    seconds = _number("timestamp", value)
    if not 0 <= seconds < 2**40:
        raise BadValue("timestamp", value, "unix seconds")
    return time.gmtime(seconds)


def _hour(value: object) -> list[str]:
    return [str(_utc(value).tm_hour)]


def _weekday(value: object) -> list[str]:
    return [str(_utc(value).tm_wday)]


def _tags(value: object) -> list[str]:
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, Iterable):
        raise BadValue("tags", value, "a list of strings")
    return [t for v in value for t in _text(v)]


TRANSFORMS: dict[str, Callable[[object], list[str]]] = {
    "text": _text,
    "age_bucket": _age_bucket,
    "zip_region": _zip_region,
    "country": _country,
    "region": _region,
    "decade": _decade,
    "hour": _hour,
    "weekday": _weekday,
    "tags": _tags,
}


# --- schema -------------------------------------------------------------------------------------


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


# --- catalog ------------------------------------------------------------------------------------


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


# --- encode -------------------------------------------------------------------------------------


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


# --- ONNX signature (read from the protobuf without onnx or onnxruntime) -------------------------

ONNX_DTYPES = {1: "float32", 7: "int64", 11: "float64", 6: "int32"}


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


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterable[tuple[int, int | memoryview]]:
    """(field number, value) pairs of one protobuf message; length-delimited values as views."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            yield number, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _value_info(buf: memoryview) -> TensorSpec:
    name, dtype, shape = "", "unknown", []
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == 2 and isinstance(value, memoryview):  # TypeProto
            for n2, tensor in _fields(value):
                if n2 != 1 or not isinstance(tensor, memoryview):
                    continue
                for n3, v3 in _fields(tensor):
                    if n3 == 1 and isinstance(v3, int):
                        dtype = ONNX_DTYPES.get(v3, f"onnx-type-{v3}")
                    elif n3 == 2 and isinstance(v3, memoryview):  # TensorShapeProto
                        for n4, dim in _fields(v3):
                            if n4 != 1 or not isinstance(dim, memoryview):
                                continue
                            entry: int | str = "?"
                            for n5, v5 in _fields(dim):
                                if n5 == 1 and isinstance(v5, int):
                                    entry = v5
                                elif n5 == 2 and isinstance(v5, memoryview):
                                    entry = bytes(v5).decode()
                            shape.append(entry)
    return TensorSpec(name, dtype, tuple(shape))


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph inputs (initializers excluded) and outputs of an ONNX model file."""
    try:
        buf = memoryview(path.read_bytes())
        graph = next(v for n, v in _fields(buf) if n == 7 and isinstance(v, memoryview))
        initializers: set[str] = set()
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for number, value in _fields(graph):
            if not isinstance(value, memoryview):
                continue
            if number == 5:  # TensorProto initializer: its name is field 8
                initializers.update(
                    bytes(v).decode() for n, v in _fields(value) if n == 8 and isinstance(v, memoryview)
                )
            elif number == 11:
                inputs.append(_value_info(value))
            elif number == 12:
                outputs.append(_value_info(value))
    except (StopIteration, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise BundleError(path.parent, f"{path.name} is not a readable ONNX model ({exc})") from exc
    return [i for i in inputs if i.name not in initializers], outputs


# --- bundle -------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(files: Mapping[str, str]) -> str:
    """The model version: a hash of every file's checksum (the manifest itself excluded)."""
    text = json.dumps(dict(sorted(files.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ranker_signature(schema: Schema) -> tuple[list[TensorSpec], list[TensorSpec]]:
    k, d = schema.virtual_slots, schema.d_embed
    inputs = [
        TensorSpec("user_attrs", "int64", (1, schema.user_slots)),
        TensorSpec("context", "int64", (1, schema.context_slots)),
        TensorSpec("behavior", "int64", (1, schema.behavior_len)),
        TensorSpec("virtual_behavior", "float32", (1, k, d)),
        TensorSpec("virtual_gate", "float32", (1, 1)),
        TensorSpec("candidates", "int64", ("n",)),
    ]
    return inputs, [TensorSpec("scores", "float32", ("n",))]


def ranker_batch_signature(schema: Schema) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Several users at once: user-side batch "u", candidates and their owners (N,)."""
    k, d = schema.virtual_slots, schema.d_embed
    inputs = [
        TensorSpec("user_attrs", "int64", ("u", schema.user_slots)),
        TensorSpec("context", "int64", ("u", schema.context_slots)),
        TensorSpec("behavior", "int64", ("u", schema.behavior_len)),
        TensorSpec("virtual_behavior", "float32", ("u", k, d)),
        TensorSpec("virtual_gate", "float32", ("u", 1)),
        TensorSpec("candidates", "int64", ("n",)),
        TensorSpec("owner", "int64", ("n",)),
    ]
    return inputs, [TensorSpec("scores", "float32", ("n",))]


def zero_shot_signature(schema: Schema) -> tuple[list[TensorSpec], list[TensorSpec]]:
    k, d = schema.virtual_slots, schema.d_embed
    inputs = [TensorSpec("user_attrs", "int64", ("b", schema.user_slots))]
    return inputs, [TensorSpec("virtual_behavior", "float32", ("b", k, d))]


@dataclass
class Bundle:
    """A validated bundle: what the service needs to serve one model version."""

    path: Path
    manifest: dict[str, Any]
    schema: Schema
    catalog: Catalog

    @property
    def version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def ranker_path(self) -> Path:
        return self.path / RANKER_FILE

    @property
    def ranker_batch_path(self) -> Path | None:
        """The optional several-users ranker, if the bundle has one."""
        return self.path / RANKER_BATCH_FILE if self.manifest.get("ranker_batch") is not None else None

    @property
    def zero_shot_path(self) -> Path | None:
        return self.path / ZERO_SHOT_FILE if self.manifest["zero_shot"] is not None else None

    @property
    def fill(self) -> dict[str, Any]:
        return dict(self.manifest["fill"])


def _read_json(root: Path, name: str) -> Any:
    path = root / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(root, f"missing file {name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(root, f"{name} is not valid JSON ({exc})") from None


def _check_signature(root: Path, name: str, expected: tuple[list[TensorSpec], list[TensorSpec]]) -> None:
    actual = onnx_signature(root / name)
    for kind, want, got in (
        ("inputs", expected[0], actual[0]),
        ("outputs", expected[1], actual[1]),
    ):
        w = [(t.name, t.dtype, len(t.shape)) for t in want]
        g = [(t.name, t.dtype, len(t.shape)) for t in got]
        if w != g:
            raise BundleError(root, f"{name} {kind} are {g}, the manifest says {w}")


def _check_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every listed file present with its checksum; the model version is their hash."""
    files: dict[str, str] = dict(manifest["files"])
    required = {RANKER_FILE, SCHEMA_FILE, CATALOG_FILE}
    if manifest["zero_shot"] is not None:
        required.add(ZERO_SHOT_FILE)
    if manifest.get("ranker_batch") is not None:
        required.add(RANKER_BATCH_FILE)
    if missing := sorted(required - set(files)):
        raise BundleError(root, f"{MANIFEST} does not list {missing}")
    for name, listed in sorted(files.items()):
        if not (root / name).is_file():
            raise BundleError(root, f"missing file {name}")
        actual = sha256_file(root / name)
        if actual != listed:
            problem = f"checksum mismatch for {name}: sha256 {actual[:16]}…, manifest {listed[:16]}…"
            raise BundleError(root, problem)
    if content_version(files) != manifest["model_version"]:
        raise BundleError(
            root, f"model_version {manifest['model_version']} does not match the file checksums"
        )


def _read_tables(root: Path) -> tuple[Schema, Catalog]:
    try:
        schema = Schema.from_dict(_read_json(root, SCHEMA_FILE))
        items = _read_json(root, CATALOG_FILE)
        features = np.asarray(items["features"], dtype=np.int64).reshape(-1, schema.item_slots)
        counts = items.get("popularity")
        popularity = None if counts is None else np.asarray(counts, dtype=np.int64)
        return schema, Catalog(list(items["ids"]), list(items["titles"]), features, popularity)
    except (KeyError, TypeError, ValueError, ContractError) as exc:
        raise BundleError(root, f"schema or catalog unreadable ({exc})") from None


def _check_signatures(root: Path, manifest: dict[str, Any], schema: Schema) -> None:
    """The manifest's ONNX signatures match the contract, and the files match the manifest."""
    towers = {RANKER_FILE: ("ranker", ranker_signature(schema))}
    if manifest["zero_shot"] is not None:
        towers[ZERO_SHOT_FILE] = ("zero_shot", zero_shot_signature(schema))
    if manifest.get("ranker_batch") is not None:
        towers[RANKER_BATCH_FILE] = ("ranker_batch", ranker_batch_signature(schema))
    for file, (tower, (inputs, outputs)) in towers.items():
        declared = manifest["onnx"].get(tower) or {}
        want = {"inputs": [t.to_dict() for t in inputs], "outputs": [t.to_dict() for t in outputs]}
        if any(declared.get(k) != v for k, v in want.items()):
            raise BundleError(root, f"manifest signature of {tower} differs from contract v{FORMAT_VERSION}")
        _check_signature(root, file, (inputs, outputs))


def load_bundle(path: Path | str) -> Bundle:
    """Read and validate a bundle directory; any disagreement raises `BundleError`."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, "no such bundle directory")
    manifest = _read_json(root, MANIFEST)
    if not isinstance(manifest, dict):
        raise BundleError(root, f"{MANIFEST} is not an object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(root, f"format version {version!r}, this service reads {FORMAT_VERSION}")
    try:
        _check_files(root, manifest)
        schema, catalog = _read_tables(root)
        _check_signatures(root, manifest, schema)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(root, f"{MANIFEST} is malformed ({exc!r})") from None
    return Bundle(root, manifest, schema, catalog)
