"""The virtual-clicks screen (benchmarks.offline.virtual_clicks): the behavior it feeds new users,
its choice on validation and its report, on made-up data and rows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchmarks.offline.virtual_clicks import MODELS, SHIPPED, choose, markdown, virtual_behavior
from model_export.popular import PopularList


def test_new_users_rows_become_their_lists_first_items_and_old_users_keep_their_behavior() -> None:
    # 3 users: user 0 old, users 1 and 2 new, in segments 0 and 1; 5 catalog items (rows 1..5)
    table = np.array([[0.1, 0.5, 0.3, 0.9, 0.0], [0.8, 0.1, 0.7, 0.2, 0.6]])
    lists = PopularList(table, np.array([0, 0, 1]))
    data = SimpleNamespace(user=np.array([0, 1, 2, 2]), is_new=np.array([False, True, True, True]))
    base = torch.tensor([[3, 2, 0], [0, 0, 0], [0, 0, 0], [5, 0, 0]])
    out = virtual_behavior(data, base, lists, 2)
    assert out[0].tolist() == [3, 2, 0]  # an old user's real behavior is left alone
    assert out[1].tolist() == [4, 2, 0]  # segment 0: items 4 (0.9) and 2 (0.5), most liked first
    assert out[2].tolist() == [1, 3, 0] and out[3].tolist() == [1, 3, 0]  # whatever was there before
    assert base[3].tolist() == [5, 0, 0]  # the input is not changed


def _row(model: str, seed: int, values: dict[str, float]) -> dict[str, Any]:
    rows = {
        k: {"val": {"ndcg": v, "p10": v}, "test": {"ndcg": v + 0.01, "p10": v}} for k, v in values.items()
    }
    return {"model": model, "seed": seed, "seconds": 1.0, "best_epoch": 5, "cold_epoch": 3, "rows": rows}


def test_the_choice_is_the_best_mean_on_validation_and_the_report_compares_it_with_control(
    tmp_path: Path,
) -> None:
    rows = [
        _row(m, s, {SHIPPED: 0.40, "cold|3|answer": 0.41 + 0.02 * (m == "mail") - 0.03 * s, "main|0": 0.39})
        for m in MODELS
        for s in (0, 1)
    ]
    # control: cold|3|answer averages 0.395 < 0.40 on validation; mail: 0.415 > 0.40
    assert choose(rows) == {"control": SHIPPED, "mail": "cold|3|answer"}
    result = {"commands": ["c"], "machine": {"cores": 2, "torch": "t"}, "chosen": choose(rows), "rows": rows}
    text = markdown(result, tmp_path / "absent.jsonl")
    assert "| mail | `cold|3|answer` |" in text and "| control | `cold|0` |" in text
    # mail's chosen test figures, 0.44 and 0.41, against control as shipped, 0.41 and 0.41
    assert "| 0.4250 ± 0.0150 | +3.7% (" in text.split("| mail |")[1].split("\n")[0]
