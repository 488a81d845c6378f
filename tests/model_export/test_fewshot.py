"""The few-shot reveal: a new user's first n interactions become behavior, never test samples."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_export import data as datasets
from model_export.batches import Batches
from model_export.checkpoint import cold_checkpoint, load_checkpoint
from model_export.cli import main as cli_main
from model_export.evaluate import RANKING_ATOL, RequestInputs, evaluate_bundle, first_interactions
from model_export.evaluation import evaluate_rows, rank_part
from model_export.features import encode_data
from model_export.fewshot import evaluate_revealed, reveal, revealed_behavior, revealed_cases
from model_export.protocol import TEST, VAL, SplitConfig, make_split
from service.contract import SPLIT_FILE, load_bundle
from service.inference import SessionOptions, Towers
from tests.conftest import TinyRun


@pytest.fixture(scope="module")
def ml(data_dir: Path) -> datasets.Interactions:
    return datasets.load_movielens(data_dir)


@pytest.mark.parametrize("protocol", ["mail", "strict"])
@pytest.mark.parametrize("clicks_only", [False, True])
def test_revealed_interactions_are_never_tested(
    ml: datasets.Interactions, protocol: str, clicks_only: bool
) -> None:
    split = make_split(ml, SplitConfig(protocol=protocol, seed=4))
    assert ml.timestamp is not None
    held = np.isin(split.part, (VAL, TEST))
    first_held: dict[str, int] = {}
    for u, t in zip(ml.user[held], ml.timestamp[held], strict=True):
        first_held[u] = min(first_held.get(u, t), t)
    for n in (1, 3, 5):
        revealed = reveal(ml, split, n, clicks_only)
        assert revealed.keys() == split.new_users
        idx = np.concatenate(list(revealed.values()))
        assert not held[idx].any()  # never a validation or test sample
        assert all(len(v) <= n for v in revealed.values())
        assert sum(len(v) == n for v in revealed.values()) > 0.9 * len(revealed)
        for user, rows in revealed.items():
            assert (ml.user[rows] == user).all()
            assert (ml.timestamp[rows] < first_held[user]).all()
            assert (np.diff(ml.timestamp[rows]) >= 0).all()  # the first n, oldest first
        if clicks_only:
            assert (ml.label[idx] == 1).all()
    assert {k: v.tolist() for k, v in reveal(ml, split, 3).items()} == {
        k: v.tolist() for k, v in reveal(ml, split, 3).items()
    }


def test_revealed_behavior_is_the_new_users_only_behavior(ml: datasets.Interactions) -> None:
    split = make_split(ml, SplitConfig(protocol="strict", seed=0))
    encoded = encode_data(ml, split, behavior_len=8)
    revealed = reveal(ml, split, 3)
    fed = revealed_behavior(ml, encoded, revealed)
    default = encoded.model_behavior(fill_new_users=False)
    assert (fed[~encoded.is_new] == default[~encoded.is_new]).all()
    new_rows = np.flatnonzero(encoded.is_new)
    assert ((fed[new_rows] > 0).sum(1) <= 3).all()
    test_new = new_rows[encoded.part[new_rows] == TEST]
    assert ((fed[test_new] > 0).sum(1) == 3).mean() > 0.9
    for row in test_new[:200]:
        user = encoded.user_ids[encoded.user[row]]
        allowed = set(encoded.catalog.rows(ml.item[revealed[user]].tolist()).tolist())
        items = fed[row][fed[row] > 0]
        assert set(items.tolist()) <= allowed


def test_nothing_revealed_gives_the_cold_start_metrics(tiny_run: TinyRun) -> None:
    run_dir = tiny_run("mail", "base")
    model, ckpt = load_checkpoint(run_dir)
    raw = datasets.make_synthetic(seed=0)
    split = make_split(raw, SplitConfig(protocol="strict", seed=0))
    encoded = encode_data(raw, split, behavior_len=8, d_embed=8)
    recorded = json.loads((run_dir / "metrics.json").read_text())["ranking"]["test"]

    cold_weights = cold_checkpoint(model, ckpt)  # new users' own: scores those with nothing known

    def ranked(revealed: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        batches = Batches(encoded, fill_new_users=False)
        batches.behavior = torch.from_numpy(revealed_behavior(raw, encoded, revealed))
        cases = revealed_cases(encoded.ranking[TEST], encoded, raw, revealed)
        return rank_part(model, batches, TEST, cases, cold=cold_weights)

    cold = ranked({})
    assert cold["new"]["ndcg@10"] == pytest.approx(recorded["new"]["ndcg@10"], abs=1e-12)
    assert cold["new"]["users"] == recorded["new"]["users"] and cold["old"]["users"] == 0
    five = reveal(raw, split, 5)
    warm = ranked(five)
    assert warm["new"]["ndcg@10"] != pytest.approx(cold["new"]["ndcg@10"], abs=1e-6)
    # the revealed items are known: never ranked, no longer positives
    cases = revealed_cases(encoded.ranking[TEST], encoded, raw, five)
    for i, row in enumerate(cases.rows.tolist()):
        seen = encoded.catalog.rows(raw.item[five[encoded.user_ids[encoded.user[row]]]].tolist())
        assert set(seen.tolist()) <= set(cases.exclude[i].tolist())
        assert not set(seen.tolist()) & set(cases.positives[i].tolist())


def test_rating_task_few_shot_with_nothing_revealed(tiny_run: TinyRun) -> None:
    """`evaluate_revealed` (the rating task's few-shot) with no reveal equals plain evaluation."""
    run_dir = tiny_run("mail", "base")
    model, _ = load_checkpoint(run_dir)
    raw = datasets.make_synthetic(seed=0)
    split = make_split(raw, SplitConfig(protocol="strict", seed=0))
    encoded = encode_data(raw, split, behavior_len=8, d_embed=8)
    rows = encoded.rows(TEST)
    cold = evaluate_revealed(model, encoded, revealed_behavior(raw, encoded, {}), rows)
    plain = evaluate_rows(model, Batches(encoded, fill_new_users=False), rows)
    assert cold == plain
    warm = evaluate_revealed(model, encoded, revealed_behavior(raw, encoded, reveal(raw, split, 5)), rows)
    assert warm["old"]["auc"] == pytest.approx(cold["old"]["auc"], abs=1e-9)
    assert warm["new"]["auc"] != pytest.approx(cold["new"]["auc"], abs=1e-6)


def test_a_bundle_reveals_and_ranks_as_training_does(
    tiny_run: TinyRun, tiny_bundle: Callable[..., Path]
) -> None:
    """`evaluate --reveal n` (ONNX Runtime, the recorded split alone) picks each test new user's
    first n interactions as `reveal` does and ranks the whole catalog as the offline few-shot
    (torch) does: below the cold checkpoint's clicks (it scores them) and at them (the weights kept
    for everyone do)."""
    run_dir = tiny_run("mail", "base")
    bundle_dir = tiny_bundle("mail", "base")
    model, ckpt = load_checkpoint(run_dir)
    cold_weights = cold_checkpoint(model, ckpt)
    assert cold_weights is not None
    raw = datasets.make_synthetic(seed=0)
    split = make_split(raw, SplitConfig(protocol="strict", seed=0))
    encoded = encode_data(raw, split, behavior_len=8, d_embed=8)
    record = json.loads((bundle_dir / SPLIT_FILE).read_text())
    bundle = load_bundle(bundle_dir)
    at = RequestInputs(bundle, Towers(bundle, SessionOptions(device="cpu")), raw, record)
    test_new = set(raw.user[split.part == TEST].tolist()) & split.new_users
    assert bundle.manifest.cold_checkpoint is not None
    clicks = bundle.manifest.cold_checkpoint.clicks
    everything = reveal(raw, split, 10**6)  # all a user did before their first test sample
    assert first_interactions(record, at, 10**6) == {u: raw.item[everything[u]].tolist() for u in test_new}
    for n in sorted({1, clicks - 1, clicks} - {0}):
        revealed = reveal(raw, split, n)
        known = first_interactions(record, at, n)
        assert known.keys() == test_new
        assert {u: raw.item[revealed[u]].tolist() for u in test_new} == known
        batches = Batches(encoded, fill_new_users=False)
        batches.behavior = torch.from_numpy(revealed_behavior(raw, encoded, revealed))
        cases = revealed_cases(encoded.ranking[TEST], encoded, raw, revealed)
        want = rank_part(model, batches, TEST, cases, cold=cold_weights)["new"]
        got = evaluate_bundle(bundle_dir, None, progress=False, reveal=n)
        assert got["revealed"] == n and got["expected_ranking"] is None
        assert got["ranking"]["new"]["users"] == want["users"] > 0
        assert got["ranking"]["old"]["users"] == 0
        for name in ("hr@10", "precision@10", "ndcg@10", "recall@50"):
            assert got["ranking"]["new"][name] == pytest.approx(want[name], abs=RANKING_ATOL), (n, name)


def test_revealing_needs_the_strict_protocol(tiny_bundle: Callable[..., Path]) -> None:
    bundle = load_bundle(tiny_bundle("mail", "base"))
    record = json.loads((bundle.path / SPLIT_FILE).read_text())
    at = RequestInputs(
        bundle, Towers(bundle, SessionOptions(device="cpu")), datasets.make_synthetic(0), record
    )
    with pytest.raises(ValueError, match="strict protocol"):
        first_interactions({**record, "protocol": "mail"}, at, 3)


def test_the_cli_says_why_it_cannot_reveal(
    tiny_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = str(tiny_bundle("mail", "base"))
    assert cli_main(["evaluate", "--bundle", bundle, "--reveal", "-1", "--quiet"]) == 2
    assert "error: --reveal: a number of interactions" in capsys.readouterr().err

    def refuse(split: dict[str, Any], at: RequestInputs, n: int) -> dict[str, list[str]]:
        raise ValueError("revealing first interactions needs the strict protocol's split, not 'mail'")

    monkeypatch.setattr("model_export.evaluate.first_interactions", refuse)
    assert cli_main(["evaluate", "--bundle", bundle, "--reveal", "3", "--quiet"]) == 2
    assert "error: revealing first interactions needs the strict" in capsys.readouterr().err
