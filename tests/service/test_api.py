"""The service over real HTTP, on a real Redis: every endpoint and every error."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs  # schemathesis's own JSON Schema validator (tests/faults)
import pytest

from benchmarks.harness.metrics import metric_value
from model_export.train import COLD_CLICKS
from service.contract import RANKER_FILE
from tests.service.conftest import ADMIN_TOKEN, NEW_USER, Live

CLICK_ID = "impression_id"


def recommend(
    client: httpx.Client, user: str | None = None, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"user_id": user or f"new-{uuid.uuid4().hex[:10]}", "attributes": NEW_USER, **body}
    return client.post("/recommend", json=payload, headers=headers or {})


def metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


def test_recommend_for_a_new_user(client: httpx.Client) -> None:
    r = recommend(client, k=5, headers={"X-Variant": "mail"})
    assert r.status_code == 200
    body = r.json()
    assert body["variant"] == r.headers["X-Variant"] == "mail"
    assert body["experiment"] == r.headers["X-Experiment"] == "cold-start"
    assert body["model_version"] == r.headers["X-Model-Version"]
    assert body["request_id"] == r.headers["X-Request-Id"]
    assert len(body["impression_id"]) == 22 and body["impression_id"] != body["request_id"]
    assert body["cold_start"] is True and body["virtual_weight"] == 1.0
    scores = [i["score"] for i in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)
    assert all(i["title"].startswith("item ") for i in body["items"])


def test_control_serves_cold_users_without_virtual_behavior(client: httpx.Client) -> None:
    body = recommend(client, headers={"X-Variant": "control"}).json()
    assert body["variant"] == "control" and body["cold_start"] is True
    assert body["virtual_weight"] == 0.0


def test_order_is_deterministic_and_request_id_is_echoed(client: httpx.Client) -> None:
    a = recommend(client, "same-user", k=20, headers={"X-Request-Id": "req-abc-1"})
    b = recommend(client, "same-user", k=20)
    assert a.headers["X-Request-Id"] == "req-abc-1"
    assert [i["item_id"] for i in a.json()["items"]] == [i["item_id"] for i in b.json()["items"]]
    assert b.json()["request_id"] != "req-abc-1"


def test_candidates_are_ranked_and_history_is_excluded_by_default(client: httpx.Client) -> None:
    r = recommend(client, candidates=["7", "3", "3", "250"], k=10)
    assert sorted(i["item_id"] for i in r.json()["items"]) == ["250", "3", "7"]
    history = [str(i) for i in range(0, 40)]
    body = recommend(client, history=history, k=100).json()
    assert body["cold_start"] is False and body["virtual_weight"] == 0.0
    assert not {i["item_id"] for i in body["items"]} & set(history)


def test_forced_variant_is_counted_separately(client: httpx.Client) -> None:
    before = metric_value(metrics(client), "mailrec_assignments_total", variant="control", source="override")
    assert recommend(client, headers={"X-Variant": "control"}).json()["variant"] == "control"
    after = metric_value(metrics(client), "mailrec_assignments_total", variant="control", source="override")
    assert after == before + 1


def test_unknown_variant_lists_the_valid_ones(client: httpx.Client) -> None:
    r = recommend(client, headers={"X-Variant": "treatment-9"})
    assert r.status_code == 400
    assert r.json() == {
        "error": "unknown_variant",
        "detail": {"message": "unknown variant 'treatment-9'", "valid": ["control", "mail"]},
    }


def test_same_user_same_variant_over_1000_calls(client: httpx.Client) -> None:
    variants = {
        recommend(client, "sticky-user-42", k=1, candidates=["1", "2"]).json()["variant"] for _ in range(1000)
    }
    assert len(variants) == 1


def test_click_is_counted_once_and_credited_to_the_serving_variant(client: httpx.Client) -> None:
    served = recommend(client, k=3, headers={"X-Variant": "mail"}).json()
    item = served["items"][1]["item_id"]
    text = metrics(client)
    clicks_before = metric_value(text, "mailrec_clicks_total", variant="mail", source="override")
    first = client.post(
        "/feedback", json={"impression_id": served["impression_id"], "item_id": item, "event": "click"}
    )
    again = client.post(
        "/feedback", json={"impression_id": served["impression_id"], "item_id": item, "event": "click"}
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["status"] == "counted" and again.json()["status"] == "duplicate"
    assert first.json()["variant"] == "mail" and first.json()["model_version"] == served["model_version"]
    clicks_after = metric_value(metrics(client), "mailrec_clicks_total", variant="mail", source="override")
    assert clicks_after == clicks_before + 1


def test_feedback_errors(client: httpx.Client, live: Live) -> None:
    served = recommend(client, k=2).json()
    unknown = client.post(
        "/feedback", json={"impression_id": "never-served", "item_id": "1", "event": "click"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_request"
    shown = {i["item_id"] for i in served["items"]}
    other = next(str(i) for i in range(300) if str(i) not in shown)
    wrong = client.post(
        "/feedback", json={"impression_id": served["impression_id"], "item_id": other, "event": "click"}
    )
    assert wrong.status_code == 422 and wrong.json()["error"] == "item_not_served"
    bad_event = client.post(
        "/feedback", json={"impression_id": served["impression_id"], "item_id": other, "event": "buy"}
    )
    assert bad_event.status_code == 422 and bad_event.json()["detail"][0]["field"] == "body.event"
    # the impression record expires with the attribution window
    r = live.redis.client()
    key = f"{live.prefix}:imp:{served['impression_id']}"
    assert 86_000 < int(r.ttl(key)) <= 86_400
    r.delete(key)
    expired = client.post(
        "/feedback",
        json={
            "impression_id": served["impression_id"],
            "item_id": served["items"][0]["item_id"],
            "event": "click",
        },
    )
    assert expired.status_code == 404


def test_a_cold_user_with_clicks_is_no_longer_cold(client: httpx.Client) -> None:
    user = f"warming-{uuid.uuid4().hex[:6]}"
    first = recommend(client, user, k=5, headers={"X-Variant": "mail"}).json()
    assert first["cold_start"] is True
    clicked = first["items"][0]["item_id"]
    assert (
        client.post(
            "/feedback", json={"impression_id": first["impression_id"], "item_id": clicked, "event": "click"}
        ).status_code
        == 202
    )
    second = recommend(client, user, k=50, headers={"X-Variant": "mail"}).json()
    assert second["cold_start"] is False and second["virtual_weight"] == 0.0
    assert clicked not in {i["item_id"] for i in second["items"]}


def test_virtual_behavior_is_cached_with_the_model_version(client: httpx.Client, live: Live) -> None:
    attrs = {"segment": "s4", "age": 44, "gender": "M"}
    text = metrics(client)
    hits, misses = (metric_value(text, "mailrec_cache_requests_total", result=r) for r in ("hit", "miss"))
    body = client.post(
        "/recommend", json={"user_id": "cache-me", "attributes": attrs}, headers={"X-Variant": "mail"}
    ).json()
    client.post(
        "/recommend", json={"user_id": "cache-me", "attributes": attrs}, headers={"X-Variant": "mail"}
    )
    # a history in the request switches the virtual behavior off: no vector read, no lookup counted
    history = [body["items"][0]["item_id"]]
    warm = client.post(
        "/recommend",
        json={"user_id": "cache-me-warm", "attributes": attrs, "history": history},
        headers={"X-Variant": "mail"},
    ).json()
    assert warm["virtual_weight"] == 0.0 and warm["cold_start"] is False
    text = metrics(client)
    assert metric_value(text, "mailrec_cache_requests_total", result="miss") == misses + 1
    assert metric_value(text, "mailrec_cache_requests_total", result="hit") == hits + 1
    # under the version of the bundle whose zero-shot tower made it: a never-seen user's is the
    # cold checkpoint's, if the bundle has one
    mail = next(m for m in client.get("/models").json()["models"] if m["variant"] == "mail")
    version = (mail["cold_checkpoint"] or {}).get("model_version", body["model_version"])
    keys = [k.decode() for k in live.redis.client().scan_iter(f"{live.prefix}:vb:{version}:*")]
    assert keys and all(len(live.redis.client().get(k) or b"") == 4 * 8 for k in keys)  # K=1, d=8 floats


def test_concurrent_misses_for_one_key_are_computed_once(live: Live, client: httpx.Client) -> None:
    attrs = {"segment": "s2", "age": 23, "gender": "F"}  # no other test uses this combination
    before = metric_value(metrics(client), "mailrec_inference_duration_seconds_count", tower="zero_shot")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as ac:
            calls = [
                ac.post(
                    "/recommend",
                    json={"user_id": f"burst-{i}", "attributes": attrs},
                    headers={"X-Variant": "mail"},
                )
                for i in range(24)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert set(asyncio.run(burst())) == {200}
    after = metric_value(metrics(client), "mailrec_inference_duration_seconds_count", tower="zero_shot")
    assert after == before + 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u", "k": 0}, "body.k"),
        ({"user_id": "u", "k": 101}, "body.k"),
        ({"k": 3}, "body.user_id"),
        ({"user_id": "u", "shoe": 1}, "body.shoe"),
        ({"user_id": "has space"}, "body.user_id"),
        ({"user_id": "u", "history": [str(i % 300) for i in range(51)]}, "body.history"),
        ({"user_id": "u", "context": {"timestamp": 1e400}}, "body.context.timestamp"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    r = client.post("/recommend", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]]


def test_non_finite_numbers_are_refused(client: httpx.Client) -> None:
    raw = '{"user_id": "u", "attributes": {"age": NaN}}'
    r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation"


def test_unknown_items_and_attributes(client: httpx.Client) -> None:
    r = client.post("/recommend", json={"user_id": "u", "candidates": ["1", "nope", "9999"]})
    assert r.status_code == 422
    assert r.json()["detail"] == {"message": "unknown item ids", "item_ids": ["nope", "9999"]}
    r = client.post("/recommend", json={"user_id": "u", "attributes": {"shoe_size": 44}})
    assert r.status_code == 422 and "shoe_size" in r.json()["detail"]["message"]
    r = client.post("/recommend", json={"user_id": "u", "attributes": {"age": "old"}})
    assert r.status_code == 422 and "age" in r.json()["detail"]["message"]


def test_body_over_64_kib_is_a_413(client: httpx.Client) -> None:
    big = {"user_id": "u", "candidates": ["1"] * 20_000}
    r = client.post("/recommend", json=big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks() -> Any:
        yield b'{"user_id": "u", "candidates": ['
        for _ in range(20_000):
            yield b'"1",'
        yield b'"1"]}'

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_probes_models_and_metrics(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "up"
    assert ready.json()["redis_embedded"] is False
    models = client.get("/models").json()
    assert [m["variant"] for m in models["models"]] == ["control", "mail"]
    assert {m["provider"] for m in models["models"]} == {"cpu"}
    assert {m["ranker_precision"] for m in models["models"]} == {"fp32"}  # the bundles' default
    assert [m["zero_shot"] for m in models["models"]] == [False, True]
    assert [m["virtual_reading"] for m in models["models"]] == [None, "shared"]  # the test bundles'
    graphs_by_model = (["ranker", "ranker_no_history"], ["zero_shot", "ranker", "ranker_no_history"])
    for m, graphs in zip(models["models"], graphs_by_model, strict=True):
        device = m["device"]  # read from the sessions: every node that ran is on the CPU provider
        assert device["provider"] == "cpu" and device["inline"] is True and device["golden_atol"] == 1e-5
        assert list(device["placement"]) == graphs
        for placed in device["placement"].values():
            assert placed["provider"] == "cpu" and placed["nodes"] > 0 and placed["not_on_provider"] == []
    assert client.post("/recommend", json={"user_id": "probe-user", "k": 3}).status_code == 200
    text = metrics(client)
    for name in (
        "mailrec_http_requests_total",
        "mailrec_http_request_duration_seconds_bucket",
        "mailrec_inference_duration_seconds_bucket",
        "mailrec_model_info",
        "mailrec_redis_up",
        "mailrec_impressions_total",
        "mailrec_recommendations_total",
    ):
        assert name in text
    assert metric_value(text, "mailrec_model_info", variant="mail", provider="cpu", precision="fp32") == 1
    assert 'route="/recommend"' in text and "user_id" not in text


def test_admin_reload_needs_the_token(client: httpx.Client) -> None:
    assert client.post("/admin/reload", json={"variant": "mail"}).status_code == 401
    r = client.post("/admin/reload", json={"variant": "mail"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"


def test_reload_swaps_and_a_tampered_bundle_is_refused_while_the_old_serves(
    client: httpx.Client, live: Live, tiny_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    original = live.bundles["mail"]
    din = tiny_bundle("mail", "din")
    swapped = client.post("/admin/reload", json={"variant": "mail", "bundle": str(din)}, headers=auth)
    assert swapped.status_code == 200, swapped.text
    new_version = swapped.json()["model_version"]
    assert recommend(client, headers={"X-Variant": "mail"}).json()["model_version"] == new_version

    tampered = tmp_path / "tampered"
    shutil.copytree(original, tampered)
    data = bytearray((tampered / RANKER_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / RANKER_FILE).write_bytes(bytes(data))
    refused = client.post("/admin/reload", json={"variant": "mail", "bundle": str(tampered)}, headers=auth)
    assert refused.status_code == 422
    assert refused.json()["error"] == "bad_bundle" and "checksum mismatch" in refused.json()["detail"]
    assert recommend(client, headers={"X-Variant": "mail"}).json()["model_version"] == new_version
    text = metrics(client)
    assert metric_value(text, "mailrec_model_reloads_total", variant="mail", result="failure") >= 1
    assert metric_value(text, "mailrec_model_info", variant="mail", model_version=new_version) == 1

    back = client.post("/admin/reload", json={"variant": "mail"}, headers=auth)  # its own bundle
    assert back.status_code == 200 and back.json()["previous_version"] == new_version


def test_an_unusual_http_method_is_counted_under_a_bounded_label(client: httpx.Client) -> None:
    assert client.request("PROPFIND", "/livez").status_code == 405
    metrics = client.get("/metrics").text
    assert 'mailrec_http_requests_total{method="other",route="/livez",status="405"}' in metrics
    assert 'method="PROPFIND"' not in metrics


def test_the_same_x_request_id_from_two_users_credits_each_click_to_its_own_user(
    client: httpx.Client,
) -> None:
    """Issue 17, defect 2: X-Request-Id is the client's correlation id; two users sending the same
    one must not share (or overwrite) an impression record."""
    users = [f"shared-{n}-{uuid.uuid4().hex[:6]}" for n in "ab"]
    shared = {"X-Request-Id": "shared-correlation-id-1"}
    served = [recommend(client, user, k=5, headers=shared).json() for user in users]
    assert [s["request_id"] for s in served] == ["shared-correlation-id-1"] * 2
    clicks = []
    for s in served:
        body = {CLICK_ID: s[CLICK_ID], "item_id": s["items"][0]["item_id"], "event": "click"}
        clicks.append(client.post("/feedback", json=body))
    assert [c.status_code for c in clicks] == [202, 202], [c.text for c in clicks]
    assert [c.json()["status"] for c in clicks] == ["counted", "counted"]
    assert [c.json()["variant"] for c in clicks] == [s["variant"] for s in served]
    assert served[0]["impression_id"] != served[1]["impression_id"]
    # the correlation id credits nothing: /feedback knows only the impression id
    by_request_id = {"request_id": "shared-correlation-id-1", "item_id": "1", "event": "click"}
    refused = client.post("/feedback", json=by_request_id)
    assert refused.status_code == 422
    assert {d["field"] for d in refused.json()["detail"]} == {"body.impression_id", "body.request_id"}
    echoed = client.post("/feedback", json=body, headers={"X-Request-Id": "click-correlation-2"})
    assert echoed.json()["status"] == "duplicate" and echoed.headers["X-Request-Id"] == "click-correlation-2"
    for user, s in zip(users, served, strict=True):
        again = recommend(client, user, k=50).json()
        assert again["cold_start"] is False  # the user's own click is in the user's own history
        assert s["items"][0]["item_id"] not in {i["item_id"] for i in again["items"]}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"user_id": "a\nb"}, "body.user_id"),
        ("/recommend", {"user_id": "u" * 129}, "body.user_id"),
        ("/recommend", {"user_id": "u1", "history": ["1", "2\r\n3"]}, "body.history.1"),
        ("/recommend", {"user_id": "u1", "candidates": ["1\x00"]}, "body.candidates.0"),
        ("/recommend", {"user_id": "u1", "candidates": ["9" * 10_000]}, "body.candidates.0"),
        ("/feedback", {"impression_id": "a\nb", "item_id": "1", "event": "click"}, "body.impression_id"),
        ("/feedback", {"impression_id": "x" * 65, "item_id": "1", "event": "click"}, "body.impression_id"),
        ("/feedback", {"impression_id": "abc", "item_id": "1\n2", "event": "click"}, "body.item_id"),
        ("/feedback", {"impression_id": "abc", "item_id": "\x7f", "event": "click"}, "body.item_id"),
        ("/feedback", {"impression_id": "abc", "item_id": "1" * 10_000, "event": "click"}, "body.item_id"),
    ],
)
def test_over_long_ids_and_control_characters_are_a_422_naming_the_field(
    client: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    """No id with a newline or of 10 KB ever reaches Redis (issue 17)."""
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation"
    assert [d["field"] for d in r.json()["detail"]] == [field]


def test_the_openapi_schema_documents_the_impression_id(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "impression_id" in schemas["RecommendResponse"]["properties"]
    assert schemas["FeedbackRequest"]["required"] == ["impression_id", "item_id", "event"]
    assert "request_id" not in schemas["FeedbackRequest"]["properties"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "error"),
    [
        ("POST", "/feedback", b"\xff not UTF-8", 400, "bad_request"),
        ("GET", "/no-such-route", None, 404, "not_found"),
        ("GET", "/recommend", None, 405, "method_not_allowed"),
    ],
)
def test_errors_from_the_framework_have_the_one_error_shape(
    client: httpx.Client, method: str, path: str, content: bytes | None, status: int, error: str
) -> None:
    """FastAPI's and Starlette's own errors too (found by schemathesis, tests/faults)."""
    headers = {"Content-Type": "application/json"} if content is not None else None
    r = client.request(method, path, content=content, headers=headers)
    assert r.status_code == status and r.json() == {"error": error, "detail": r.json()["detail"]}, r.text


def documented_error(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The body schema /openapi.json documents for `status` of an operation, refs resolvable."""
    response = doc["paths"][path][method.lower()]["responses"][str(status)]
    return {**response["content"]["application/json"]["schema"], "components": doc["components"]}


ERROR_CASES = [  # (method, path, request, status, error code): each a real request the service refuses
    (
        "POST",
        "/recommend",
        {"json": {"user_id": "u"}, "headers": {"X-Variant": "nope"}},
        400,
        "unknown_variant",
    ),
    ("POST", "/feedback", {"content": b"\xff not UTF-8"}, 400, "bad_request"),
    ("POST", "/admin/reload", {"json": {"variant": "mail"}}, 401, "unauthorized"),
    (
        "POST",
        "/feedback",
        {"json": {"impression_id": "never", "item_id": "1", "event": "click"}},
        404,
        "unknown_request",
    ),
    (
        "POST",
        "/recommend",
        {"json": {"user_id": "u", "candidates": ["1"] * 20_000}},
        413,
        "payload_too_large",
    ),
    ("POST", "/recommend", {"json": {"attributes": {}}}, 422, "validation"),
    ("POST", "/recommend", {"json": {"user_id": "u", "k": 10_000}}, 422, "invalid_input"),
    ("POST", "/recommend", {"json": {"user_id": "u", "attributes": {"age": "old"}}}, 422, "invalid_input"),
    ("POST", "/admin/reload", {"json": {"variant": "mail", "extra": 1}}, 422, "validation"),
]


@pytest.mark.parametrize(("method", "path", "request_", "status", "error"), ERROR_CASES)
def test_each_error_body_is_the_one_openapi_documents(
    client: httpx.Client, method: str, path: str, request_: dict[str, Any], status: int, error: str
) -> None:
    """What the service really answers validates against what /openapi.json says it answers."""
    doc = client.get("/openapi.json").json()
    if "content" in request_:
        request_ = {**request_, "headers": {"Content-Type": "application/json"}}
    r = client.request(method, path, **request_)
    assert r.status_code == status and r.json()["error"] == error, r.text
    jsonschema_rs.Draft202012Validator(documented_error(doc, method, path, status)).validate(r.json())


def test_every_documented_error_is_the_error_shape_and_admin_needs_a_bearer(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            assert operation["tags"], path
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"
                    }, (path, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "/metrics" not in doc["paths"]
    scheme = doc["paths"]["/admin/reload"]["post"]["security"][0]
    assert doc["components"]["securitySchemes"][next(iter(scheme))] == {
        "type": "http",
        "scheme": "bearer",
        "description": "MAILREC_ADMIN_TOKEN",
    }
    assert {s for _, _, _, s, _ in ERROR_CASES} | {503} >= {400, 401, 404, 413, 422, 503}


def request_lines(live: Live, request_id: str) -> list[dict[str, Any]]:
    """The service's JSON log lines for `request_id` (the line is written once the response is out)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(line) for line in live.service.log.read_text().splitlines() if line.startswith("{")
        ]
        found = [line for line in lines if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_one_json_log_line_per_request_without_attribute_values(client: httpx.Client, live: Live) -> None:
    secret = {"segment": "seg-4f7c2e", "age": 87.125, "gender": "gender-9b3d1a"}
    user = f"new-{uuid.uuid4().hex[:10]}"
    body = {"user_id": user, "attributes": secret}
    r = client.post("/recommend", json=body, headers={"X-Variant": "mail", "X-Request-Id": "log-test-1"})
    assert r.status_code == 200
    [line] = request_lines(live, "log-test-1")
    assert line["level"] == "INFO" and line["logger"] == "service.requests"
    assert line["route"] == "/recommend" and line["method"] == "POST" and line["status"] == 200
    assert line["variant"] == "mail" and line["model_version"] == r.json()["model_version"]
    assert line["cold_start"] is True and line["cache"] in {"hit", "miss"}
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    log = live.service.log.read_text()
    for value in ("seg-4f7c2e", "87.125", "gender-9b3d1a", user):
        assert value not in log


def test_a_user_the_model_never_saw_is_scored_by_the_cold_checkpoint(
    client: httpx.Client, live: Live
) -> None:
    from service.contract import blend_gate, encode, load_bundle
    from service.inference import SessionOptions, Towers

    bundle = load_bundle(live.bundles["mail"])
    assert bundle.cold is not None  # the tiny mail run's new users peak at another epoch
    described = {m["variant"]: m for m in client.get("/models").json()["models"]}
    assert described["mail"]["cold_checkpoint"]["model_version"] == bundle.cold.version
    pin = bundle.manifest.cold_checkpoint
    assert pin is not None
    assert described["mail"]["cold_checkpoint"]["epoch"] == pin.epoch
    assert described["mail"]["cold_checkpoint"]["scale"] == pin.scale
    assert described["mail"]["cold_checkpoint"]["clicks"] == pin.clicks == COLD_CLICKS > 1
    items = bundle.catalog.ids[:30]
    context = {"timestamp": 881250949}

    def expected(b: Any, user: str, history: list[str]) -> list[float]:
        towers = Towers(b, SessionOptions(device="cpu"))
        enc = encode(b.schema, b.catalog, user, NEW_USER, history, context)
        gate = blend_gate(enc.n_history, towers.fill_mode, towers.blend_tau)
        virtual = towers.virtual_behavior(enc.user_attrs) if gate > 0 else None
        scores = towers.score(enc, virtual, gate, b.catalog.rows(items))
        return sorted(scores.tolist(), reverse=True)[:10]

    def served(user: str, history: list[str]) -> list[float]:
        body = recommend(
            client, user, candidates=items, history=history, context=context, headers={"X-Variant": "mail"}
        ).json()
        assert body["model_version"] == bundle.version  # one version names the pair
        return [i["score"] for i in body["items"]]

    new = f"never-seen-{uuid.uuid4().hex[:6]}"
    assert served(new, []) == pytest.approx(expected(bundle.cold, new, []), abs=1e-6)
    assert served(new, []) != pytest.approx(expected(bundle, new, []), abs=1e-6)
    # fewer clicks than the manifest's `clicks`: still the cold checkpoint's; that many: the
    # weights every other user gets
    few = list(bundle.catalog.ids[40 : 40 + pin.clicks - 1])
    assert served(new, few) == pytest.approx(expected(bundle.cold, new, few), abs=1e-6)
    enough = list(bundle.catalog.ids[40 : 40 + pin.clicks])
    assert served(new, enough) == pytest.approx(expected(bundle, new, enough), abs=1e-6)
    # the click that makes `clicks` may be read back from Redis, not sent
    first = recommend(client, new, k=1, context=context, headers={"X-Variant": "mail"}).json()
    clicked = first["items"][0]["item_id"]
    click = {"impression_id": first["impression_id"], "item_id": clicked, "event": "click"}
    assert client.post("/feedback", json=click).status_code == 202
    assert served(new, few) == pytest.approx(expected(bundle, new, [*few, clicked]), abs=1e-6)
