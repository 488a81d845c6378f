from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export import data as datasets
from model_export.features import encode_data
from model_export.protocol import TEST, SplitConfig, make_split
from service.contract import (
    MEMO_SIZE,
    OOV,
    PAD,
    RANKER_BATCH_INPUTS,
    RANKER_INPUTS,
    BadValue,
    BundleError,
    Catalog,
    FieldSpec,
    Schema,
    TensorSpec,
    UnknownField,
    UnknownItems,
    behavior_rows,
    blend_gate,
    check_session,
    encode,
    ranker_batch_signature,
    ranker_feeds,
    ranker_signature,
    zero_shot_signature,
)


def test_field_ids_reserve_pad_and_oov() -> None:
    f = FieldSpec("occupation", "occupation", "text", vocab=("engineer", "writer"))
    assert f.encode("Engineer ") == [2]
    assert f.encode("astronaut") == [OOV]
    assert f.encode(None) == [PAD]
    bag = FieldSpec("genres", "genres", "tags", slots=3, vocab=("comedy", "drama"))
    assert bag.encode(["Drama", "Comedy", "Drama", "Western", "x"]) == [3, 2, OOV]
    assert bag.encode("Comedy|Drama") == [2, 3, PAD]


def test_remembered_encodings_equal_fresh_ones_and_keep_types_apart() -> None:
    f = FieldSpec("flag", "flag", "text", vocab=("1", "true"))
    for _ in range(2):  # the second round is answered from the memo
        assert f.encode(1) == [2] and f.encode(True) == [3]  # equal keys, different inputs
        assert f.encode(1.0) == [OOV]  # "1.0"
    got = f.encode("1")
    got.append(99)  # a caller's list is its own
    assert f.encode("1") == [2]
    age = FieldSpec("age", "age", "age_bucket", vocab=("25-34",))
    for _ in range(2):  # errors are not remembered
        with pytest.raises(BadValue):
            age.encode("old")
    for i in range(MEMO_SIZE + 10):  # bounded
        f.encode(f"user-{i}")
    assert len(f.__dict__["_memo"]) <= MEMO_SIZE
    assert f.encode(True) == [3]


def test_transforms() -> None:
    age = FieldSpec("age", "age", "age_bucket", vocab=("25-34",))
    assert age.tokens(31) == ["25-34"] and age.tokens("7") == ["0-17"] and age.tokens(80) == ["56+"]
    assert age.tokens(0) == []
    with pytest.raises(BadValue):
        age.tokens("old")
    with pytest.raises(BadValue):
        age.tokens(float("nan"))
    assert FieldSpec("zip", "zip", "zip_region").tokens("94110") == ["9"]
    assert FieldSpec("zip", "zip", "zip_region").tokens("T8H1N") == ["non-us"]
    assert FieldSpec("c", "location", "country").tokens("san diego, california, usa") == ["usa"]
    assert FieldSpec("r", "location", "region").tokens("san diego, california, usa") == ["california, usa"]
    assert FieldSpec("h", "timestamp", "hour").tokens(881250949) == ["15"]


def _tiny_schema() -> Schema:
    return Schema(
        user_fields=(
            FieldSpec("user_id", "user_id", "text", vocab=("1",)),
            FieldSpec("gender", "gender", "text", vocab=("f", "m")),
        ),
        item_fields=(FieldSpec("item_id", "item_id", "text", vocab=("10",)),),
        context_fields=(FieldSpec("none", "none", "text"),),
        behavior_len=3,
        virtual_slots=1,
        d_embed=4,
    )


def test_unknown_attribute_is_an_error_unseen_value_is_oov() -> None:
    schema = _tiny_schema()
    catalog = Catalog.build(schema, {"10": {}, "11": {}}, {})
    enc = encode(schema, catalog, "new", {"gender": "X"}, ["10", "11"])
    assert enc.user_attrs.tolist() == [[OOV, OOV]]
    assert enc.behavior.tolist() == [[2, 1, 0]]  # most recent first: rows of 11, 10
    assert enc.n_history == 2
    with pytest.raises(UnknownField, match="shoe_size"):
        encode(schema, catalog, "1", {"shoe_size": 44})
    with pytest.raises(UnknownItems, match="99"):
        encode(schema, catalog, "1", {}, ["10", "99"])


def test_behavior_rows_and_gates() -> None:
    assert behavior_rows([5, 6, 7, 8], 3).tolist() == [8, 7, 6]
    assert behavior_rows([], 2).tolist() == [0, 0]
    assert blend_gate(0, "hard", 3) == 1.0 and blend_gate(1, "hard", 3) == 0.0
    assert blend_gate(0, "blend", 3) == 1.0 and blend_gate(3, "blend", 3) == 0.5
    assert blend_gate(0, "off", 3) == 0.0


def test_the_three_signatures_come_from_one_table() -> None:
    schema = _tiny_schema()
    ranker, batch, zst = ranker_signature(schema), ranker_batch_signature(schema), zero_shot_signature(schema)
    assert [t.name for t in ranker.inputs] == list(RANKER_INPUTS)
    assert [t.name for t in batch.inputs] == list(RANKER_BATCH_INPUTS)
    assert ranker.inputs[0] == TensorSpec("user_attrs", "int64", (1, 2))
    assert batch.inputs[3] == TensorSpec("virtual_behavior", "float32", ("u", 1, 4))
    assert zst.outputs == (TensorSpec("virtual_behavior", "float32", ("b", 1, 4)),)
    assert ranker.dynamic_axes() == {"candidates": {0: "n"}, "scores": {0: "n"}}
    assert batch.dynamic_axes()["virtual_gate"] == {0: "u"} and batch.dynamic_axes()["owner"] == {0: "n"}
    assert zst.dynamic_axes() == {"user_attrs": {0: "b"}, "virtual_behavior": {0: "b"}}


def test_ranker_feeds_for_one_user_and_for_several() -> None:
    schema = _tiny_schema()
    catalog = Catalog.build(schema, {"10": {}, "11": {}}, {})
    users = [encode(schema, catalog, "1", {"gender": g}, ["10"]) for g in ("f", "m")]
    virtual = np.zeros((2, 1, 4), np.float32)
    gates = np.array([[1.0], [0.0]], np.float32)
    one = ranker_feeds(users[:1], virtual[:1], gates[:1], np.array([1, 2]))
    assert list(one) == list(RANKER_INPUTS) and one["user_attrs"] is users[0].user_attrs
    both = ranker_feeds(users, virtual, gates, np.array([1, 2, 1]), np.array([0, 0, 1]))
    assert list(both) == list(RANKER_BATCH_INPUTS)
    assert both["user_attrs"].tolist() == [[2, 2], [2, 3]] and both["behavior"].shape == (2, 3)


class _Arg:
    """An onnxruntime NodeArg's name, type string and shape."""

    def __init__(self, name: str, type: str, shape: list[int | str]) -> None:
        self.name, self.type, self.shape = name, type, shape


class _Session:
    def __init__(self, inputs: list[_Arg], outputs: list[_Arg]) -> None:
        self.inputs, self.outputs = inputs, outputs

    def get_inputs(self) -> list[_Arg]:
        return self.inputs

    def get_outputs(self) -> list[_Arg]:
        return self.outputs


def test_a_session_must_have_the_signature_names_dtypes_and_ranks() -> None:
    expected = zero_shot_signature(_tiny_schema())
    path = Path("bundle/zero_shot.onnx")
    out = [_Arg("virtual_behavior", "tensor(float)", ["b", 1, 4])]
    check_session(_Session([_Arg("user_attrs", "tensor(int64)", ["b", 2])], out), path, expected)
    for wrong in (
        _Arg("user_attrs", "tensor(int32)", ["b", 2]),
        _Arg("user_attrs", "tensor(int64)", [2]),
        _Arg("attrs", "tensor(int64)", ["b", 2]),
    ):
        with pytest.raises(BundleError, match=r"zero_shot.onnx inputs are \[\("):
            check_session(_Session([wrong], out), path, expected)
    double = [_Arg("virtual_behavior", "tensor(double)", ["b", 1, 4])]
    with pytest.raises(BundleError, match=r"outputs are \[\('virtual_behavior', 'float64', 3\)\]"):
        check_session(_Session([_Arg("user_attrs", "tensor(int64)", ["b", 2])], double), path, expected)


def test_training_row_and_request_encode_identically(data_dir: Path) -> None:
    """encode() on the raw request equals the arrays the model trained on, row by row."""
    raw = datasets.load_movielens(data_dir)
    split = make_split(raw, SplitConfig(seed=4))
    data = encode_data(raw, split, behavior_len=16)
    assert raw.timestamp is not None
    rng = np.random.default_rng(0)
    rows = rng.choice(data.rows(TEST), 50, replace=False)
    for row in rows:
        src = data.source[row]
        user, ts = str(raw.user[src]), int(raw.timestamp[src])
        mine = np.flatnonzero((raw.user == user) & (raw.timestamp < ts))
        mine = mine[np.lexsort((raw.item[mine], raw.timestamp[mine]))]
        request = encode(
            data.schema,
            data.catalog,
            user,
            raw.users[user],
            raw.item[mine].tolist(),
            {"timestamp": ts},
        )
        assert request.user_attrs[0].tolist() == data.user_attrs[data.user[row]].tolist()
        assert request.context[0].tolist() == data.context[row].tolist()
        assert request.behavior[0].tolist() == data.behavior[row].tolist()
        assert data.catalog.rows([str(raw.item[src])])[0] == data.item[row]
