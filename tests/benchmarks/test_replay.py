"""The replay command against a real service: a popularity variant beside two models."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from benchmarks import replay
from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import RedisServer, ServiceProcess
from service.contract import load_bundle


def test_replay_counts_clicks_from_the_service_metrics_and_serves_popularity(
    tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    bundles = {
        "control": tiny_bundle("control", "base"),
        "mail": tiny_bundle("mail", "base"),
        "popular": tiny_bundle("control", "base"),
    }
    experiments = write_experiment(tmp_path / "experiments.toml", bundles, kinds={"popular": "popularity"})
    redis_server = RedisServer().start()
    service = ServiceProcess(
        {
            "MAILREC_EXPERIMENTS": str(experiments),
            "MAILREC_REDIS_URL": redis_server.url,
            "MAILREC_REDIS_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            "MAILREC_DEVICE": "cpu",
            "MAILREC_REDIS_BUDGET_MS": "250",
        }
    )
    try:
        service.start()
        with httpx.Client(base_url=service.url, timeout=30) as client:
            described = {m["variant"]: m for m in client.get("/models").json()["models"]}
            assert described["popular"]["model"] == "popularity"
            assert described["popular"]["kind"] == "popularity"
            assert described["mail"]["model"] == "mail"
            # the popularity variant answers with the catalog's training counts, most liked first
            catalog = load_bundle(bundles["popular"]).catalog
            assert catalog.popularity is not None
            r = client.post(
                "/recommend", json={"user_id": "p-1", "k": 5}, headers={"X-Variant": "popular"}
            ).json()
            counts = dict(zip(catalog.ids, catalog.popularity.tolist(), strict=True))
            best = sorted(counts.values(), reverse=True)[:5]
            assert [it["score"] for it in r["items"]] == [float(c) for c in best]
            assert r["virtual_weight"] == 0.0
        out = tmp_path / "replay"
        code = replay.main(
            ["--url", service.url, "--bundle", str(bundles["mail"]), "--users", "40", "--out", str(out)]
        )
        assert code == 0
        report = json.loads(out.with_name("replay.json").read_text())
        assert report["failed_calls"] == 0
        by = {r["variant"]: r for r in report["variants"]}
        assert set(by) == {"control", "mail", "popular"}
        for row in by.values():
            # /metrics (read back from the service) agrees with what the replay itself sent
            assert [row["impressions"], row["clicks"]] == row["replay_counted"]
            assert row["users"] == report["new_users"] == 40
            assert row["impressions"] == 40 * 10
            assert 0 <= row["ctr_95"][0] <= row["ctr"] <= row["ctr_95"][1] <= 1
        assert np.isfinite(by["mail"]["lift_95"]).all()
        assert by["popular"]["clicks"] > 0  # the synthetic data's popular items are liked by someone
    finally:
        service.stop()
        redis_server.close()
