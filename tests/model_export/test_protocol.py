from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export import data as datasets
from model_export.features import encode_data
from model_export.protocol import (
    TEST,
    TRAIN,
    UNUSED,
    VAL,
    SplitConfig,
    add_declared_genres,
    behavior_windows,
    make_split,
    split_record,
    user_runs,
)
from service.contract import OOV


@pytest.fixture(scope="module")
def ml(data_dir: Path) -> datasets.Interactions:
    return datasets.load_movielens(data_dir)


def test_split_is_deterministic_under_its_seed(ml: datasets.Interactions) -> None:
    a = make_split(ml, SplitConfig(seed=7))
    b = make_split(ml, SplitConfig(seed=7))
    c = make_split(ml, SplitConfig(seed=8))
    assert a.new_users == b.new_users and (a.part == b.part).all()
    assert a.new_users != c.new_users
    assert len(a.new_users) == round(0.4 * 943)


def test_mail_protocol_is_chronological_per_user(ml: datasets.Interactions) -> None:
    split = make_split(ml, SplitConfig(seed=0))
    assert ml.timestamp is not None
    for user in ["1", "13", "655"]:
        mine = ml.user == user
        ts, part = ml.timestamp[mine], split.part[mine]
        assert ts[part == TRAIN].max() <= ts[part == VAL].min() <= ts[part == TEST].min()
        assert (part == TEST).sum() == round(0.2 * mine.sum())
    assert (split.part == UNUSED).sum() == 0  # the paper's protocol keeps every sample


def test_strict_protocol_never_trains_on_new_users(ml: datasets.Interactions) -> None:
    split = make_split(ml, SplitConfig(protocol="strict", seed=0))
    new = np.isin(ml.user, list(split.new_users))
    assert not (new & (split.part == TRAIN)).any()
    assert (new & (split.part == TEST)).sum() > 0
    # a quarter of the new users validate, whole: their last samples are VAL, never TEST
    validating = np.isin(ml.user, list(split.val_new_users))
    assert split.val_new_users < split.new_users and len(split.val_new_users) == round(
        0.25 * len(split.new_users)
    )
    assert not (validating & (split.part == TEST)).any() and (validating & (split.part == VAL)).any()
    assert not (new & ~validating & (split.part == VAL)).any()
    assert make_split(ml, SplitConfig(protocol="strict", seed=0)).val_new_users == split.val_new_users
    encoded = encode_data(ml, split)
    user_id = encoded.schema.user_fields[0]
    assert user_id.name == "user_id"
    assert all(user_id.encode(u) == [OOV] for u in split.new_users)
    mail = encode_data(ml, make_split(ml, SplitConfig(protocol="mail", seed=0)))
    assert all(mail.schema.user_fields[0].encode(u) != [OOV] for u in split.new_users)


@pytest.mark.parametrize("protocol", ["mail", "strict"])
def test_no_new_users_behavior_leaks_into_their_samples(ml: datasets.Interactions, protocol: str) -> None:
    split = make_split(ml, SplitConfig(protocol=protocol, seed=1))
    encoded = encode_data(ml, split)
    fed = encoded.model_behavior(fill_new_users=False)
    assert encoded.is_new.any()
    assert (fed[encoded.is_new] == 0).all()  # every sample of a new user, train, val and test
    assert (fed[~encoded.is_new] > 0).any()
    assert (encoded.behavior[encoded.is_new] > 0).any()  # the real behavior exists (for the oracle)


def test_behavior_is_strictly_earlier_and_never_the_target(ml: datasets.Interactions) -> None:
    split = make_split(ml, SplitConfig(seed=0))
    encoded = encode_data(ml, split, behavior_len=16)
    assert ml.timestamp is not None
    when = {(u, i): t for u, i, t in zip(ml.user, ml.item, ml.timestamp, strict=True)}
    rng = np.random.default_rng(0)
    for row in rng.choice(len(encoded), 300, replace=False):
        user = encoded.user_ids[encoded.user[row]]
        t = ml.timestamp[encoded.source[row]]
        items = [encoded.catalog.ids[r - 1] for r in encoded.behavior[row] if r > 0]
        assert encoded.item[row] not in encoded.behavior[row]
        assert all(when[(user, i)] < t for i in items)


def test_split_json_has_raw_ids_to_rebuild_the_test_set(ml: datasets.Interactions) -> None:
    split = make_split(ml, SplitConfig(seed=2))
    record = json.loads(json.dumps(split_record(ml, split)))
    test = split.part == TEST
    rebuilt = set(zip(record["test"]["user"], record["test"]["item"], strict=True))
    assert rebuilt == set(zip(ml.user[test].tolist(), ml.item[test].tolist(), strict=True))
    assert set(record["new_users"]) == set(split.new_users)
    assert record["test"]["label"] == ml.label[test].tolist()
    assert record["counts"]["test"] == int(test.sum())


def test_declared_genres_are_never_tested(ml: datasets.Interactions) -> None:
    clean = add_declared_genres(ml, n_first=5, noise=0.0, seed=0)
    assert clean.n_samples == ml.n_samples - 5 * 943
    genres = clean.users["1"]["genres"]
    assert isinstance(genres, list) and 1 <= len(genres) <= 3
    noisy = add_declared_genres(ml, n_first=5, noise=1.0, seed=0)
    same = sum(clean.users[u]["genres"] == noisy.users[u]["genres"] for u in ml.users)
    assert same < 0.2 * len(ml.users)
    split = make_split(clean, SplitConfig(seed=0))
    assert (split.part[~clean.is_sample] == UNUSED).all()


def test_declared_genres_by_lift_name_what_a_user_watches_more_than_the_catalog_holds(
    ml: datasets.Interactions,
) -> None:
    by_count = add_declared_genres(ml, n_first=10, seed=0)
    by_lift = add_declared_genres(ml, n_first=10, seed=0, by="lift")
    assert (by_lift.is_sample == by_count.is_sample).all()  # the same interactions leave the samples
    assert by_lift.notes["onboarding"]["by"] == "lift"  # type: ignore[index]

    def share(data: datasets.Interactions, genre: str) -> float:
        return sum(genre in data.users[u]["genres"] for u in ml.users) / len(ml.users)  # type: ignore[operator]

    # Drama and Comedy, the catalog's commonest genres, are what counting names; lift names fewer
    assert share(by_count, "Drama") > share(by_lift, "Drama") + 0.1
    assert share(by_count, "Comedy") > share(by_lift, "Comedy")
    with pytest.raises(ValueError, match="ranking of declared genres"):
        add_declared_genres(ml, by="often")


def test_user_runs_bound_each_users_rows() -> None:
    starts, ends = user_runs(np.array(["a", "a", "b", "c", "c", "c"]))
    assert starts.tolist() == [0, 2, 3] and ends.tolist() == [2, 3, 6]


def test_behavior_windows_hold_the_users_strictly_earlier_rows() -> None:
    users = np.array(["a", "a", "a", "b", "b"])
    times = np.array([10, 20, 20, 5, 30], np.int64)
    at_users = np.array(["a", "a", "a", "b", "b"])
    at_times = np.array([10, 20, 21, 5, 31], np.int64)
    start, stop = behavior_windows(users, times, at_users, at_times)
    # a at 10: nothing before; at 20: the row at 10; at 21: all three; b at 5: none; at 31: both
    assert start.tolist() == [0, 0, 0, 3, 3] and stop.tolist() == [0, 1, 3, 3, 5]
    start, stop = behavior_windows(users, None, np.array(["b", "a"]), None)  # no time: every row
    assert start.tolist() == [3, 0] and stop.tolist() == [5, 3]


@pytest.mark.parametrize("timed", [True, False])
def test_a_user_without_behavior_rows_sees_no_one_elses(timed: bool) -> None:
    users = np.array(["a", "a", "c"])
    times = np.array([10, 20, 5], np.int64) if timed else None
    at_times = np.array([30, 30, 30], np.int64) if timed else None
    start, stop = behavior_windows(users, times, np.array(["b", "0", "z"]), at_times)
    assert (stop - start).tolist() == [0, 0, 0]
