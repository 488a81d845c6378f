"""The bundle on disk: its layout, checksums and model version, and `load_bundle()`.

A bundle is a directory: `manifest.json` (`Manifest`), `schema.json`, `catalog.json`,
`split.json`, `ranker.onnx`, `ranker_batch.onnx` and, for a model with a zero-shot tower,
`zero_shot.onnx`. The manifest lists every other file with its sha256; the model version is a
hash of those checksums.

`load_bundle()` refuses a bundle whose files, checksums, format version or declared ONNX
signatures disagree with its manifest or with this contract. The graphs themselves are checked
against the same signatures when ONNX Runtime opens them (`signatures.check_session`, called by
`service.inference.Towers`).

Format 1 has one optional file: `ranker_batch.onnx`, the ranking tower for several users in one
call, used by the service's micro-batcher. A manifest lists it under "ranker_batch"; bundles
without it load as before, and services that predate it ignore it (it is checksummed like every
listed file), so the format version did not change.

Reduced-precision rankers (issue 16) are optional files of the same kind: `ranker_int8.onnx` and
`ranker_batch_int8.onnx` (dynamic int8 quantization of the two fp32 graphs, same signatures),
named with their checksums under the manifest's `precisions`, which also says which precision is
the default. A bundle without `precisions` has fp32 alone, its default (`Bundle.precisions`).
listed file), so the format version did not change. The same holds for `item_vectors.npy`
(manifest key "item_vectors"): what the ranking tower makes of each catalog item before it meets
the user, (I+1, D) float32 in numpy's format, row 0 PAD, which the service's candidate stage
searches when a catalog is too big to score whole (`service.candidates`), and for
`item_prior.npy` (manifest key "item_prior", `ItemPrior`): the ranker's fixed per-item prior as a
table, with which the service picks a cold user's candidates (`service.candidates.PriorStage`).

So is `ranker_no_history.onnx` (manifest key "ranker_no_history"): `ranker.onnx` for a user with
no behavior, without the `behavior` input and the pooling over it (fp32; the same scores, held to
`ranker.onnx`'s by the golden check), which the service serves such a user where the ranker is
fp32. A ranker whose no-history graph would be no smaller (DIN) has none.

So is a cold checkpoint (manifest key "cold_checkpoint", `ColdCheckpoint`): a sub-directory that is
itself a complete bundle of the same schema and catalog, whose weights score a user with an
unknown id and fewer clicks than the manifest's `clicks` (1: no history; the epoch where new
users' validation NDCG@10 peaked, what the ranker learned over its prior scaled by the manifest's
`scale`). The parent
lists the sub-bundle's files (as "cold/<name>", with their checksums), so the parent's model
version covers them; a service that predates it serves every user with the parent's graphs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.errors import BundleError, ContractError
from service.contract.features import Catalog, IntArray, Schema
from service.contract.manifest import FP32, PRECISIONS, Manifest, Precision
from service.contract.signatures import (
    ranker_batch_signature,
    ranker_no_history_signature,
    ranker_signature,
    zero_shot_signature,
)

FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.json"
CATALOG_FILE = "catalog.json"
SPLIT_FILE = "split.json"
RANKER_FILE = "ranker.onnx"
RANKER_BATCH_FILE = "ranker_batch.onnx"
RANKER_NO_HISTORY_FILE = "ranker_no_history.onnx"
ZERO_SHOT_FILE = "zero_shot.onnx"
# each precision's (ranker, ranker_batch) files as export names them
RANKER_FILES = {
    "fp32": (RANKER_FILE, RANKER_BATCH_FILE),
    "int8": ("ranker_int8.onnx", "ranker_batch_int8.onnx"),
    "fp16": ("ranker_fp16.onnx", "ranker_batch_fp16.onnx"),
}
ITEM_VECTORS_FILE = "item_vectors.npy"
ITEM_PRIOR_FILE = "item_prior.npy"


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


@dataclass
class Bundle:
    """A validated bundle: what the service needs to serve one model version."""

    path: Path
    manifest: Manifest
    schema: Schema
    catalog: Catalog
    cold: Bundle | None = None  # the cold checkpoint's bundle (`ColdCheckpoint`), if any

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def precisions(self) -> dict[str, Precision]:
        """The ranking graphs by precision: the manifest's, or fp32 alone for an older bundle."""
        man = self.manifest
        if man.precisions:
            return man.precisions
        batch = man.ranker_batch
        fp32 = Precision(
            RANKER_FILE,
            man.files[RANKER_FILE],
            batch,
            None if batch is None else man.files[batch],
            "any",
            1e-5,  # the service holds fp32 to its GOLDEN_ATOL
        )
        return {FP32: fp32}

    def scored_cold(self, user_attrs: IntArray, n_history: int) -> bool:
        """Whether this bundle's cold checkpoint scores an encoded user (`user_attrs` (1, A)): it
        has one, and the user's id is unknown with fewer clicks than its manifest's `clicks`
        (`Schema.is_unseen`): the one rule the service and `evaluate --bundle` choose by."""
        pin = self.manifest.cold_checkpoint
        return (
            self.cold is not None
            and pin is not None
            and self.schema.is_unseen(user_attrs, n_history, pin.clicks)
        )

    @property
    def default_precision(self) -> str:
        return self.manifest.default_precision if self.manifest.precisions else FP32

    @property
    def item_vectors_path(self) -> Path | None:
        """The optional item vectors of the candidate stage, if the bundle has them."""
        return self.path / ITEM_VECTORS_FILE if self.manifest.item_vectors is not None else None

    @property
    def item_prior_path(self) -> Path | None:
        """The optional table of the ranker's item prior (`ItemPrior`), if the bundle has it."""
        return self.path / self.manifest.item_prior.file if self.manifest.item_prior is not None else None

    @property
    def zero_shot_path(self) -> Path | None:
        return self.path / ZERO_SHOT_FILE if self.manifest.zero_shot is not None else None

    @property
    def ranker_no_history_path(self) -> Path | None:
        """The optional fp32 ranker for users with no behavior, if the bundle has it."""
        return self.path / RANKER_NO_HISTORY_FILE if self.manifest.ranker_no_history is not None else None


def _read_json(root: Path, name: str) -> Any:
    path = root / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(root, f"missing file {name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(root, f"{name} is not valid JSON ({exc})") from None


def _read_manifest(root: Path) -> Manifest:
    raw = _read_json(root, MANIFEST)
    if not isinstance(raw, dict):
        raise BundleError(root, f"{MANIFEST} is not an object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(root, f"format version {version!r}, this service reads {FORMAT_VERSION}")
    try:
        return Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(root, f"{MANIFEST} is malformed ({exc!r})") from None


def _check_files(root: Path, manifest: Manifest) -> None:
    """Every listed file present with its checksum; the model version is their hash."""
    files = manifest.files
    required = {RANKER_FILE, SCHEMA_FILE, CATALOG_FILE}
    if manifest.zero_shot is not None:
        required.add(ZERO_SHOT_FILE)
    if manifest.ranker_batch is not None:
        required.add(RANKER_BATCH_FILE)
    if manifest.ranker_no_history is not None:
        required.add(RANKER_NO_HISTORY_FILE)
    if manifest.item_vectors is not None:
        required.add(ITEM_VECTORS_FILE)
    if manifest.item_prior is not None:
        required.add(manifest.item_prior.file)
    if missing := sorted(required - set(files)):
        raise BundleError(root, f"{MANIFEST} does not list {missing}")
    for name, listed in sorted(files.items()):
        if not (root / name).is_file():
            raise BundleError(root, f"missing file {name}")
        actual = sha256_file(root / name)
        if actual != listed:
            problem = f"checksum mismatch for {name}: sha256 {actual[:16]}…, manifest {listed[:16]}…"
            raise BundleError(root, problem)
    _check_precisions(root, manifest)
    if content_version(files) != manifest.model_version:
        raise BundleError(root, f"model_version {manifest.model_version} does not match the file checksums")


def _check_precisions(root: Path, manifest: Manifest) -> None:
    """Each precision's files are listed files with the same checksums; fp32 is ranker.onnx; the
    default is one of them."""
    if not manifest.precisions:
        return
    files = manifest.files
    for name, precision in manifest.precisions.items():
        if name not in PRECISIONS:
            raise BundleError(root, f"unknown precision {name!r}; this service knows {PRECISIONS}")
        pairs = [(precision.ranker, precision.ranker_sha256)]
        if precision.ranker_batch is not None:
            pairs.append((precision.ranker_batch, precision.ranker_batch_sha256 or ""))
        for file, digest in pairs:
            if files.get(file) != digest:
                raise BundleError(root, f"precision {name}: {file} is not listed with its checksum")
    fp32 = manifest.precisions.get(FP32)
    if fp32 is None or fp32.ranker != RANKER_FILE:
        raise BundleError(root, f"precisions must name fp32 as {RANKER_FILE}")
    default = manifest.precisions.get(manifest.default_precision)
    if default is None:
        raise BundleError(root, f"default precision {manifest.default_precision!r} is not in the bundle")
    if default.device != "any":  # `auto` must serve on any host
        raise BundleError(
            root, f"default precision {manifest.default_precision!r} is for {default.device} only"
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


def _check_declared_signatures(root: Path, manifest: Manifest, schema: Schema) -> None:
    """The manifest declares, for each graph it lists, the contract's signature for this schema."""
    towers = {"ranker": ranker_signature(schema)}
    if manifest.zero_shot is not None:
        towers["zero_shot"] = zero_shot_signature(schema)
    if manifest.ranker_batch is not None:
        towers["ranker_batch"] = ranker_batch_signature(schema)
    if manifest.ranker_no_history is not None:
        towers["ranker_no_history"] = ranker_no_history_signature(schema)
    for tower, expected in towers.items():
        declared = manifest.onnx.get(tower)
        if declared is None or declared.signature != expected:
            raise BundleError(root, f"manifest signature of {tower} differs from contract v{FORMAT_VERSION}")


def load_bundle(path: Path | str) -> Bundle:
    """Read and validate a bundle directory; any disagreement raises `BundleError`."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, "no such bundle directory")
    manifest = _read_manifest(root)
    _check_files(root, manifest)
    schema, catalog = _read_tables(root)
    _check_declared_signatures(root, manifest, schema)
    return Bundle(root, manifest, schema, catalog, _load_cold(root, manifest, schema, catalog))


def _load_cold(root: Path, manifest: Manifest, schema: Schema, catalog: Catalog) -> Bundle | None:
    """The cold checkpoint's sub-bundle: listed by the parent, of the same model, schema and
    catalog, pinned by its version, holding no cold checkpoint of its own."""
    cold = manifest.cold_checkpoint
    if cold is None:
        return None
    if cold.dir in ("", ".", "..") or "/" in cold.dir or "\\" in cold.dir:
        raise BundleError(root, f"cold checkpoint directory {cold.dir!r} is not a plain name")
    sub = load_bundle(root / cold.dir)
    if sub.version != cold.model_version:
        raise BundleError(root, f"cold checkpoint is {sub.version}, the manifest pins {cold.model_version}")
    unlisted = sorted(n for n, d in sub.manifest.files.items() if manifest.files.get(f"{cold.dir}/{n}") != d)
    if unlisted:  # the parent's version must cover every file the cold checkpoint serves
        raise BundleError(root, f"{MANIFEST} does not list the cold checkpoint's {unlisted}")
    if sub.manifest.cold_checkpoint is not None:
        raise BundleError(root, "a cold checkpoint holds a cold checkpoint of its own")
    same = (
        sub.model == manifest.model
        and sub.schema.to_dict() == schema.to_dict()
        and sub.catalog.ids == catalog.ids
        and np.array_equal(sub.catalog.features, catalog.features)
    )
    if not same:
        raise BundleError(root, "the cold checkpoint's model, schema or catalog differs from the bundle's")
    return sub
