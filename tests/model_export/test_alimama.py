"""The Alimama (Tianchi dataId 56) loader and the paper's day protocol, on a fixture in its format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export import data as datasets
from model_export.features import encode_data
from model_export.protocol import DAY_OFFSET, DAY_SECONDS, TEST, TRAIN, UNUSED, VAL, SplitConfig, make_split

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "alimama"


@pytest.fixture(scope="module")
def ali() -> datasets.Interactions:
    return datasets.load_alimama(FIXTURE)


def _day(ts: np.ndarray) -> np.ndarray:
    return (ts + DAY_OFFSET) // DAY_SECONDS


def test_loader_reads_the_four_tianchi_files(ali: datasets.Interactions) -> None:
    lines = {p.name: p.read_text().splitlines()[1:] for p in FIXTURE.glob("*.csv")}
    assert ali.n_samples == len(lines["raw_sample.csv"])
    assert len(ali) - ali.n_samples == len(lines["behavior_log.csv"])
    assert ali.label[ali.is_sample].sum() == sum(r.endswith(",1") for r in lines["raw_sample.csv"])
    assert ali.users["234"]["pvalue_level"] is None  # empty field
    assert ali.users["234"]["new_user_class_level"] == "3"  # the header's trailing space
    assert ali.users["1008"] == {}  # no profile row
    assert ali.items["4"]["brand"] is None  # "NULL"
    assert ali.items["6"]["price"] == "10"  # log2(1280 + 1) -> bucket 10
    # behavior names a category and a brand, no ad: one behavior-only item per pair
    assert ali.items["b:9999:123"] == {"cate_id": "9999", "brand": "123"}
    behavior_items = set(ali.item[~ali.is_sample].tolist())
    assert all(i.startswith("b:") for i in behavior_items)
    assert not behavior_items & set(ali.item[ali.is_sample].tolist())


def test_a_wrong_header_is_a_data_error(tmp_path: Path) -> None:
    for f in FIXTURE.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    log = tmp_path / "behavior_log.csv"
    log.write_text(log.read_text().replace("btag", "type", 1))
    with pytest.raises(datasets.DataError, match="behavior_log.csv: header"):
        datasets.load_alimama(tmp_path)
    (tmp_path / "ad_feature.csv").unlink()
    with pytest.raises(datasets.DataError, match="missing data file"):
        datasets.load_alimama(tmp_path)


def test_user_fraction_is_a_seeded_subset(ali: datasets.Interactions) -> None:
    half = datasets.load_alimama(FIXTURE, user_fraction=0.5, seed=1)
    again = datasets.load_alimama(FIXTURE, user_fraction=0.5, seed=1)
    assert 0 < len(half.users) < len(ali.users) and half.users.keys() == again.users.keys()
    assert set(half.user.tolist()) == set(half.users)


def test_days_protocol_tests_the_last_day_and_trains_on_the_seven_before(
    ali: datasets.Interactions,
) -> None:
    split = make_split(ali, SplitConfig(protocol="days", seed=0))
    assert ali.timestamp is not None
    day = _day(ali.timestamp)
    samples = ali.is_sample
    last = day[samples].max()
    assert ((split.part == TEST) == (samples & (day == last))).all()
    assert (split.part[~samples] == UNUSED).all()
    train, val = split.part == TRAIN, split.part == VAL
    assert (day[train | val] >= last - 7).all() and (day[train | val] < last).all()
    assert ali.timestamp[train].max() <= ali.timestamp[val].min()  # validation = the latest slice
    assert val.sum() == round(0.1 * (train | val).sum())
    n_users = len(np.unique(ali.user[samples]))
    assert len(split.new_users) == round(0.4 * n_users)


def test_days_protocol_deletes_new_users_behavior_and_keeps_it_earlier(
    ali: datasets.Interactions,
) -> None:
    split = make_split(ali, SplitConfig(protocol="days", seed=0))
    encoded = encode_data(ali, split, behavior_len=8, clicks_only=True)
    fed = encoded.model_behavior(fill_new_users=False)
    assert (fed[encoded.is_new] == 0).all() and (fed[~encoded.is_new] > 0).any()
    assert ali.timestamp is not None
    when: dict[tuple[str, str], list[int]] = {}
    for u, i, t in zip(ali.user, ali.item, ali.timestamp, strict=True):
        when.setdefault((u, i), []).append(t)
    for row in range(len(encoded)):
        user = encoded.user_ids[encoded.user[row]]
        t = ali.timestamp[encoded.source[row]]
        for r in encoded.behavior[row][encoded.behavior[row] > 0]:
            assert min(when[(user, encoded.catalog.ids[r - 1])]) < t
    # ads and the shopping log share the category and brand vocabularies
    cate = next(f for f in encoded.schema.item_fields if f.name == "cate_id")
    assert "6406" in cate.vocab


def test_tiny_run_on_the_fixture() -> None:
    from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
    from model_export.pipeline import RunSpec, run
    from model_export.train import TrainConfig

    spec = RunSpec(
        dataset="alimama",
        data_dir=str(FIXTURE),
        protocol="days",
        behavior="clicks",
        behavior_len=8,
        d_embed=8,
        model=ModelConfig(
            model="mail",
            ranker=RankerConfig(hidden=(16, 8), d_attention=8),
            zero_shot=ZeroShotConfig(d_hidden=8, width=16, d_attention=8),
        ),
        train=TrainConfig(task="rating", epochs=1, batch_size=16, progress=False, threads=1),
    )
    _, report = run(spec, None)
    assert report["test"]["all"]["samples"] == int((_day_of_fixture() == _day_of_fixture().max()).sum())
    assert 0.0 <= report["test"]["all"]["auc"] <= 1.0


def _day_of_fixture() -> np.ndarray:
    ts = [int(r.split(",")[1]) for r in (FIXTURE / "raw_sample.csv").read_text().splitlines()[1:]]
    return _day(np.array(ts))
