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
    BadValue,
    Catalog,
    FieldSpec,
    Schema,
    UnknownField,
    UnknownItems,
    behavior_rows,
    blend_gate,
    encode,
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


def test_unknown_attribute_is_an_error_unseen_value_is_oov() -> None:
    schema = Schema(
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
