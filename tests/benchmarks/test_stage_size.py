"""benchmarks.stage_size: a stage that ranks every item agrees with the whole catalog, and the rule
picks the smallest stage that agrees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.stage_size import choose, choose_prior, measure, measure_prior
from service.contract import load_bundle


def test_a_stage_covering_the_catalog_agrees_and_a_small_one_ranks_fewer_rows(
    tiny_bundle: Callable[..., Path],
) -> None:
    bundle = tiny_bundle("mail", "base")
    n = len(load_bundle(bundle).catalog)
    result = measure(bundle, None, grid=[(n, n, 0), (4, 2, 0)])
    whole, small = result["sizes"]
    assert result["users"]["new"] > 0 and result["users"]["old"] > 0
    for who in ("new", "old"):
        assert whole[who]["top10_overlap"] == 1.0 and whole[who]["top10_identical"] == 1.0
        assert whole[who]["recall_of_top100"] == 1.0
    assert small["new"]["rows_ranked"] < whole["new"]["rows_ranked"] == n
    assert small["new"]["recall_of_top100"] < 1.0


def _size(rows: float, overlap_new: float, overlap_old: float) -> dict[str, Any]:
    return {
        "new": {"top10_overlap": overlap_new, "rows_ranked": rows},
        "old": {"top10_overlap": overlap_old, "rows_ranked": rows},
    }


def test_the_rule_takes_the_fewest_rows_that_agree_for_new_and_old_users_in_every_bundle() -> None:
    grid = [(3, 3, 3), (2, 2, 2), (1, 1, 1)]
    a = {"sizes": [_size(300, 1.0, 1.0), _size(200, 0.999, 0.996), _size(100, 1.0, 0.99)]}
    b = {"sizes": [_size(310, 1.0, 1.0), _size(190, 0.996, 1.0), _size(90, 1.0, 1.0)]}
    assert choose([a, b], grid) == {"probes": 2, "candidates": 2, "popular": 2}
    b["sizes"][1] = _size(190, 0.99, 1.0)  # one bundle's new users disagree: the larger stage
    assert choose([a, b], grid) == {"probes": 3, "candidates": 3, "popular": 3}
    assert choose([{"sizes": [_size(1, 0.5, 0.5)]}], [(1, 1, 1)]) is None


def test_the_prior_stage_covering_the_catalog_agrees_and_its_rule_takes_the_fewest_rows_that_agree(
    tiny_bundle: Callable[..., Path],
) -> None:
    bundle = tiny_bundle("mail", "base")
    n = len(load_bundle(bundle).catalog)
    result = measure_prior(bundle, None, grid=(n, 2))
    assert result is not None and result["users"] > 0
    whole, small = result["sizes"]
    assert whole["top10_overlap"] == whole["top10_identical"] == whole["recall_of_top100"] == 1.0
    assert small["rows_ranked"] == 2 + 10 < whole["rows_ranked"] == n  # the rows plus k
    assert small["recall_of_top100"] < 1.0

    def sizes(*overlaps: float) -> dict[str, Any]:
        return {
            "sizes": [{"prior": p, "top10_overlap": o} for p, o in zip((200, 50, 10), overlaps, strict=True)]
        }

    assert choose_prior([sizes(1.0, 0.996, 0.9), sizes(1.0, 1.0, 1.0)]) == 50
    assert choose_prior([sizes(1.0, 0.99, 0.9), sizes(1.0, 1.0, 1.0)]) == 200
    assert choose_prior([sizes(0.9, 0.9, 0.9)]) is None and choose_prior([]) is None


def test_the_prior_stage_for_new_users_with_clicks_leaves_the_clicks_out_and_covers_the_rest(
    tiny_bundle: Callable[..., Path],
) -> None:
    bundle = tiny_bundle("mail", "base")
    loaded = load_bundle(bundle)
    n = len(loaded.catalog)
    assert loaded.manifest.cold_checkpoint is not None and loaded.manifest.cold_checkpoint.clicks > 2
    result = measure_prior(bundle, None, grid=(n, 2), clicks=2)
    assert result is not None and result["users"] > 0 and result["clicks"] == 2
    whole, small = result["sizes"]
    # every row but the two clicked ones: the whole catalog's ranking, exactly
    assert whole["rows_ranked"] == n - 2
    assert whole["top10_overlap"] == whole["top10_identical"] == whole["recall_of_top100"] == 1.0
    # 2 rows plus k and the clicks, the clicks (where the prior ranked them) left out
    assert 2 + 10 <= small["rows_ranked"] <= 2 + 10 + 2 and small["recall_of_top100"] < 1.0
    clicks = loaded.manifest.cold_checkpoint.clicks
    assert measure_prior(bundle, None, grid=(n,), clicks=clicks) is None  # everyone's weights score them
