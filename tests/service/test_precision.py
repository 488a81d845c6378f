"""MAILREC_RANKER_PRECISION on a live service: int8 served, shown in /models and mailrec_model_info."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.harness.metrics import metric_value
from tests.service.conftest import NEW_USER, start_live


def test_the_setting_overrides_the_bundle_default(
    tiny_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    live = start_live(tmp_path_factory.mktemp("int8"), tiny_bundle, MAILREC_RANKER_PRECISION="int8")
    try:
        with live.client() as client:
            models = client.get("/models").json()["models"]
            assert {m["variant"]: m["ranker_precision"] for m in models} == {
                "control": "int8",
                "mail": "int8",
            }
            assert all(m["device"]["ranker_precision"] == "int8" for m in models)
            assert all(m["device"]["golden_atol"] >= 0.02 for m in models)
            r = client.post("/recommend", json={"user_id": "int8-user", "attributes": NEW_USER, "k": 5})
            assert r.status_code == 200 and len(r.json()["items"]) == 5
            text = client.get("/metrics").text
            assert metric_value(text, "mailrec_model_info", variant="mail", precision="int8") == 1
            assert metric_value(text, "mailrec_model_info", precision="fp32") == 0
    finally:
        live.close()
