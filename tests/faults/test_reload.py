"""/admin/reload every second under load, alternating a good and a corrupted bundle."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.contract import RANKER_FILE
from tests.faults.load import Background, lua_body_script
from tests.service.conftest import ADMIN_TOKEN, NEW_USER, Live

pytestmark = pytest.mark.slow  # a reload a second under load


def corrupted_copy(bundle: Path, where: Path) -> Path:
    shutil.copytree(bundle, where)
    data = bytearray((where / RANKER_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (where / RANKER_FILE).write_bytes(bytes(data))
    return where


def test_reload_every_second_under_load_alternating_good_and_corrupted(
    live: Live,
    tiny_bundle: Callable[..., Path],
    tmp_path: Path,
    record: Callable[[str, str, str], None],
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    good = tiny_bundle("mail", "din")
    bad = corrupted_copy(live.bundles["mail"], tmp_path / "corrupted")
    with live.client() as client:
        body = {"user_id": "reload-load-user", "attributes": NEW_USER}
        before = client.post("/recommend", json=body, headers={"X-Variant": "mail"}).headers[
            "X-Model-Version"
        ]
        control = client.post("/recommend", json=body, headers={"X-Variant": "control"})
        script = lua_body_script(json.dumps(body), header="X-Model-Version")
        load = Background(live.url + "/recommend", script, 8, 7, tmp_path)
        time.sleep(1)
        answers = []
        started = time.monotonic()
        for i in range(5):
            bundle = good if i % 2 == 0 else bad
            r = client.post("/admin/reload", json={"variant": "mail", "bundle": str(bundle)}, headers=auth)
            answers.append(r)
            time.sleep(1)
        reloads_s = time.monotonic() - started - 5
        run = load.join()
        restored = client.post("/admin/reload", json={"variant": "mail"}, headers=auth)
    good_versions = {before, answers[0].json()["model_version"], control.headers["X-Model-Version"]}
    statuses = [r.status_code for r in answers]
    reasons = [r.json()["detail"] for r in answers if r.status_code != 200]
    seen = dict(run.header)
    record(
        "/admin/reload every second under /recommend load, alternating a good and a corrupted bundle",
        "0 failed requests; every X-Model-Version one of the good versions; "
        "the bad one refused with its reason",
        f"{run.requests} requests in 7 s, {run.non_2xx} non-2xx; versions seen {seen} "
        f"(good: {sorted(good_versions)}); reloads {statuses}, {reloads_s:.1f} s spent in the 5 "
        f"reload calls; refused with: {reasons[0] if reasons else None!r}",
    )
    assert statuses == [200, 422, 200, 422, 200]
    assert all(
        r.json()["error"] == "bad_bundle" and "checksum mismatch" in r.json()["detail"] for r in answers[1::2]
    )
    assert run.requests > 0 and run.non_2xx == 0 and run.socket_errors == 0, run.statuses
    assert set(seen) <= good_versions and sum(seen.values()) == run.requests, seen
    assert restored.status_code == 200
