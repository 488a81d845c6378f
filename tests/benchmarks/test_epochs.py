from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.offline import epochs


def _row(method: str, seed: int, new: list[float], every: list[float], kept: int) -> dict[str, object]:
    return {
        "cell": {"dataset": "d", "protocol": "strict", "ranker": "base", "method": method, "seed": seed},
        "best_epoch": kept,
        "losses": [{"val_ndcg_new": n, "val_ndcg": a} for n, a in zip(new, every, strict=True)],
    }


def test_new_users_checkpoint_is_chosen_on_the_other_seeds_only(tmp_path: Path) -> None:
    rows = [
        # seed 0 peaks at epoch 1, the others at epoch 2: leaving seed 0 out chooses epoch 2 for it
        _row("control", 0, [0.5, 0.1, 0.2], [0.1, 0.2, 0.3], 3),
        _row("control", 1, [0.2, 0.4, 0.1], [0.1, 0.2, 0.4], 3),
        _row("control", 2, [0.2, 0.6], [0.1, 0.3], 2),  # stopped after epoch 2: its last value on
        {"cell": {"dataset": "d", "protocol": "strict", "ranker": "base", "method": "popularity", "seed": 0}},
    ]
    found = epochs.curves(rows)  # type: ignore[arg-type]
    assert list(found) == [("d, strict, base", "control")]
    s = epochs.summarize(found[("d, strict, base", "control")])
    # leave out 0: others' means by epoch (0.2, 0.5, 0.35) -> 2; out 1: (0.35, 0.35, 0.4) -> 3;
    # out 2: (0.35, 0.25, 0.15) -> 1
    assert s["new_checkpoint_epochs"] == [2, 3, 1]
    assert s["new_checkpoint"] == pytest.approx((0.1 + 0.1 + 0.2) / 3, abs=1e-4)
    assert s["new_at_kept"] == pytest.approx((0.2 + 0.1 + 0.6) / 3, abs=1e-4)
    assert s["new_by_epoch"] == pytest.approx([0.3, 0.3667, 0.3], abs=1e-4)
    kept_all, own_all = (0.3 + 0.4 + 0.3) / 3, (0.2 + 0.4 + 0.1) / 3
    assert s["all_drop_at_new_checkpoint"] == pytest.approx(own_all / kept_all - 1, abs=1e-4)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert epochs.main(["--rows", str(path), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out.md").read_text()
    assert "| d, strict, base | control | 3 | 3/3/2 |" in table
    assert json.loads((tmp_path / "out.json").read_text())["summary"][0]["new_checkpoint_epochs"] == [2, 3, 1]


def test_one_seed_leaves_nothing_out() -> None:
    s = epochs.summarize({0: ([0.3, 0.4], [0.1, 0.2], 2)})
    assert s["new_checkpoint"] is None and s["lift"] is None and s["new_checkpoint_epochs"] == []
    table = epochs.markdown({"command": "c", "rows": "r", "summary": [{"setting": "x", "method": "m", **s}]})
    assert "| x | m | 1 | 2 | 0.4000 | – | – | – | – |" in table
