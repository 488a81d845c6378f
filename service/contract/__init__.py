"""The one contract between training (`model_export`) and serving (`service`).

Standard library and numpy only: the service imports it without torch, and `model_export`
imports it so that nothing about features, graphs or bundles is written twice. Its modules:

* `transforms`: raw values -> tokens (text, age groups, zip regions, ...),
* `features`: the feature schema (fields, vocabularies, PAD/OOV ids), the catalog, and `encode()`,
  the single function that turns raw user attributes, history and context into the integer arrays
  both ONNX graphs take, used for training rows and for live requests alike,
* `signatures`: the ONNX graphs' input/output names, dtypes and shapes, their input dicts, and the
  check of a live ONNX Runtime session against them,
* `manifest`: the typed `manifest.json`,
* `bundle`: the bundle layout, checksums and `load_bundle()`,
* `errors`: `ContractError` and its subclasses.

The names below are re-exported, so `from service.contract import X` works for each of them.
"""

from service.contract.bundle import (
    CATALOG_FILE,
    FORMAT_VERSION,
    ITEM_VECTORS_FILE,
    MANIFEST,
    RANKER_BATCH_FILE,
    RANKER_FILE,
    SCHEMA_FILE,
    SPLIT_FILE,
    ZERO_SHOT_FILE,
    Bundle,
    content_version,
    load_bundle,
    sha256_file,
)
from service.contract.errors import BadValue, BundleError, ContractError, UnknownField, UnknownItems
from service.contract.features import (
    MEMO_SIZE,
    N_RESERVED,
    OOV,
    PAD,
    Catalog,
    Encoded,
    FieldSpec,
    FloatArray,
    IntArray,
    Schema,
    behavior_rows,
    blend_gate,
    build_vocab,
    encode,
)
from service.contract.manifest import BatchParity, BehaviorSource, Fill, GoldenCase, Graph, Manifest, Parity
from service.contract.signatures import (
    RANKER_BATCH_INPUTS,
    RANKER_INPUTS,
    RANKER_OUTPUTS,
    ZST_INPUTS,
    ZST_OUTPUTS,
    Signature,
    TensorSpec,
    check_session,
    ranker_batch_signature,
    ranker_feeds,
    ranker_signature,
    tensor_spec,
    zero_shot_signature,
)
from service.contract.transforms import AGE_EDGES, TRANSFORMS

__all__ = [
    "AGE_EDGES",
    "CATALOG_FILE",
    "ITEM_VECTORS_FILE",
    "FORMAT_VERSION",
    "MANIFEST",
    "MEMO_SIZE",
    "N_RESERVED",
    "OOV",
    "PAD",
    "RANKER_BATCH_FILE",
    "RANKER_BATCH_INPUTS",
    "RANKER_FILE",
    "RANKER_INPUTS",
    "RANKER_OUTPUTS",
    "SCHEMA_FILE",
    "SPLIT_FILE",
    "TRANSFORMS",
    "ZERO_SHOT_FILE",
    "ZST_INPUTS",
    "ZST_OUTPUTS",
    "BadValue",
    "BatchParity",
    "BehaviorSource",
    "Bundle",
    "BundleError",
    "Catalog",
    "ContractError",
    "Encoded",
    "FieldSpec",
    "Fill",
    "FloatArray",
    "GoldenCase",
    "Graph",
    "IntArray",
    "Manifest",
    "Parity",
    "Schema",
    "Signature",
    "TensorSpec",
    "UnknownField",
    "UnknownItems",
    "behavior_rows",
    "blend_gate",
    "build_vocab",
    "check_session",
    "content_version",
    "encode",
    "load_bundle",
    "ranker_batch_signature",
    "ranker_feeds",
    "ranker_signature",
    "sha256_file",
    "tensor_spec",
    "zero_shot_signature",
]
