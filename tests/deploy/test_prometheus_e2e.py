"""End to end: redis-server, the service and a real Prometheus, as in docker-compose.yml.

Prometheus runs the repository's prometheus.yml and rules.yml (only the intervals and the target
change) against the service on loopback. The test sends recommend and click traffic, keeps its
own ledger of what it sent, stops Redis, and then evaluates every PromQL expression of the
dashboards and of the rules through Prometheus's HTTP API: each must return data, and the CTR,
lift, impressions and clicks they report must equal the ledger's.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.processes import RedisServer, ServiceProcess
from tests.deploy.stack import (
    DOCKER,
    SERVICE_JOB,
    PrometheusServer,
    Query,
    all_queries,
    dashboard_queries,
    finite,
)

pytestmark = pytest.mark.slow  # a real Prometheus scraping, rules and alerts evaluated over time

ADMIN_TOKEN = "e2e-admin-token"
USER = {"segment": "s1", "age": 31, "gender": "F"}


def attributes(i: int) -> dict[str, Any]:
    """Users unlike USER: the virtual behavior is cached by attributes, so these compute anew."""
    return {"segment": f"s{i % 6}", "age": 20 + 9 * (i % 5), "gender": "M"}


VARIANTS = ("control", "mail")
SOURCES = ("hash", "override")
CLICKS_PER_RESPONSE = {"control": 3, "mail": 1}  # so that mail's CTR is below control's
# Grafana's $__rate_interval and $__range become this window: it covers the whole test, so the
# dashboards' rates and increases see every sample since the first scrape.
WINDOW = "10m"


@dataclass
class Ledger:
    """What the test sent, by variant: the truth the metrics must report."""

    impressions: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    def ctr(self, variant: str) -> float:
        return self.clicks[variant] / self.impressions[variant]

    def lift(self) -> float:
        return self.ctr("mail") / self.ctr("control") - 1


class Traffic:
    def __init__(self, client: httpx.Client, ledger: Ledger) -> None:
        self.client = client
        self.ledger = ledger

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        response = self.client.post(path, json=body, headers=headers or {})
        self.ledger.statuses[response.status_code] += 1
        return response

    def recommend(self, user: str, k: int, variant: str | None = None, **body: Any) -> dict[str, Any]:
        headers = {"X-Variant": variant} if variant else {}
        r = self.post("/recommend", {"user_id": user, "k": k, "attributes": USER, **body}, headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        assert variant is None or data["variant"] == variant
        self.ledger.impressions[data["variant"]] += len(data["items"])
        return data

    def click(self, data: dict[str, Any], item: str, expect: str = "counted") -> None:
        r = self.post(
            "/feedback", {"impression_id": data["impression_id"], "item_id": item, "event": "click"}
        )
        assert r.status_code == 202 and r.json()["status"] == expect, r.text
        if expect == "counted":
            self.ledger.clicks[data["variant"]] += 1

    def recommend_and_click(self, user: str, k: int, variant: str | None = None, **body: Any) -> None:
        data = self.recommend(user, k, variant, **body)
        for item in data["items"][: CLICKS_PER_RESPONSE[data["variant"]]]:
            self.click(data, item["item_id"])


@dataclass
class Stack:
    redis: RedisServer
    service: ServiceProcess
    prometheus: PrometheusServer


@pytest.fixture()
def stack(tiny_bundle: Callable[..., Path], tmp_path: Path) -> Iterator[Stack]:
    bundles = {v: tiny_bundle(v, "base") for v in VARIANTS}
    experiments = write_experiment(tmp_path / "experiments.toml", bundles)
    redis_server = RedisServer().start()
    service = ServiceProcess(
        {
            "MAILREC_EXPERIMENTS": str(experiments),
            "MAILREC_REDIS_URL": redis_server.url,
            "MAILREC_ADMIN_TOKEN": ADMIN_TOKEN,
            "MAILREC_DEVICE": "cpu",
            # Redis calls past the budget are skipped (by design); on a loaded test machine that
            # would drop impression records and turn clicks into 404s. Here every call counts.
            "MAILREC_REDIS_BUDGET_MS": "2000",
        }
    )
    prometheus: PrometheusServer | None = None
    try:
        service.start()
        prometheus = PrometheusServer(f"127.0.0.1:{service.port}", interval="1s").start()
        yield Stack(redis_server, service, prometheus)
    finally:
        if prometheus is not None:
            prometheus.close()
        service.stop()
        redis_server.close()


def healthcheck(port: int) -> int:
    """docker/healthcheck.py, the images' HEALTHCHECK, against the local service."""
    env = {"MAILREC_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True
    ).returncode


def wait_for_initial_series(prom: PrometheusServer) -> None:
    """Before any traffic, Prometheus has scraped every A/B series at 0.

    rate() and increase() cannot see what a counter counted before its first scrape, so the
    service creates the series of every experiment, variant and source at 0 when it starts;
    without that, the first impressions and clicks of each series would be missing from the CTR.
    """
    expected = {(v, s) for v in VARIANTS for s in SOURCES}
    for metric in ("mailrec_impressions_total", "mailrec_clicks_total"):
        try:
            result = prom.wait_for(
                metric, lambda r: {(s["metric"]["variant"], s["metric"]["source"]) for s in r} >= expected,
                timeout=10,
            )  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(
                f"{metric}: the service must export every variant x source series at 0 from its "
                f"start, or rate()/increase() miss each series' first increments ({exc})"
            ) from None
        assert all(s["value"] == 0 for s in result), result


def one_of_each(traffic: Traffic) -> None:
    """Every kind of request the test sends, once; each route and outcome gets its series."""
    for variant in VARIANTS:
        traffic.recommend_and_click(f"one-{variant}-{uuid.uuid4().hex[:8]}", 10, variant)
    traffic.recommend_and_click(f"one-hash-{uuid.uuid4().hex[:8]}", 10)
    traffic.recommend_and_click(f"one-warm-{uuid.uuid4().hex[:8]}", 10, history=["1", "2", "3"])
    repeat = f"one-repeat-{uuid.uuid4().hex[:8]}"
    traffic.recommend(repeat, 5, "mail")
    time.sleep(0.2)  # the virtual behavior is written back to Redis off the response path
    traffic.recommend(repeat, 5, "mail")  # a cache hit
    # A duplicate click is not counted again; bad requests are rejected, not errors.
    data = traffic.recommend(f"one-dup-{uuid.uuid4().hex[:8]}", 5, "mail")
    traffic.click(data, data["items"][0]["item_id"])
    traffic.click(data, data["items"][0]["item_id"], expect="duplicate")
    assert traffic.post("/recommend", {"user_id": "x", "k": 0}).status_code == 422
    assert traffic.post("/recommend", {"user_id": "x"}, {"X-Variant": "nope"}).status_code == 400
    unknown = {"impression_id": "never-served", "item_id": "1", "event": "click"}
    assert traffic.post("/feedback", unknown).status_code == 404
    # An admin reload of mail's own bundle: the model info stays, a reload is counted.
    r = traffic.post("/admin/reload", {"variant": "mail"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    for path in ("/models", "/readyz", "/livez"):
        assert traffic.client.get(path).status_code == 200


def bulk(traffic: Traffic) -> None:
    """Forced variants (X-Variant, source=override) with over 1000 impressions each, the CTR
    alert's minimum; hash-assigned cold users; warm users (with a history)."""
    for variant in VARIANTS:
        for i in range(11):
            traffic.recommend_and_click(f"ab-{variant}-{i}", 100, variant, attributes=attributes(i))
    for i in range(10):
        traffic.recommend_and_click(f"hash-{i}", 20, attributes=attributes(i + 11))
    for i in range(4):
        traffic.recommend_and_click(f"warm-{i}", 10, history=["1", "2", "3"])


def redis_down(traffic: Traffic, n: int) -> None:
    """Without Redis, recommendations are still served (and counted); clicks cannot be
    attributed (503): the Redis-down and error-rate alerts have something to see."""
    data = traffic.recommend(f"no-redis-{uuid.uuid4().hex[:8]}", 10)
    for _ in range(n):
        assert data["impression_id"] is None  # not recorded; a click on any impression is refused
        body = {"impression_id": "served-before-the-outage", "item_id": "1", "event": "click"}
        assert traffic.post("/feedback", body).status_code == 503


def drive_traffic(traffic: Traffic, stack: Stack) -> None:
    """Each phase ends once Prometheus has scraped it.

    A series that appears between two scrapes shows Prometheus its value then, not the increase
    that created it: every kind of request is sent once before the measured traffic, so that the
    series of every route, status and outcome exist (with a value) when it starts.
    """
    prom = stack.prometheus
    one_of_each(traffic)
    wait_until_counted(prom, traffic.ledger)
    bulk(traffic)
    one_of_each(traffic)
    stack.redis.stop()
    redis_down(traffic, 1)
    wait_until_counted(prom, traffic.ledger)
    prom.wait_for('sum(mailrec_http_requests_total{status="503"})', lambda r: bool(r))
    redis_down(traffic, 20)


def wait_until_counted(prom: PrometheusServer, ledger: Ledger) -> None:
    """Prometheus has scraped every impression and click the ledger holds."""
    for metric, counts in (
        ("mailrec_impressions_total", ledger.impressions),
        ("mailrec_clicks_total", ledger.clicks),
    ):
        expected = {v: float(n) for v, n in counts.items()}
        prom.wait_for(
            f"sum by (variant) ({metric})",
            lambda r, e=expected: {s["metric"]["variant"]: s["value"] for s in r} == e,  # type: ignore[misc]
        )


def wait_until_scraped(prom: PrometheusServer, ledger: Ledger) -> float:
    """Wait for the final counts, then a few more scrapes and rule evaluations; the last scrape."""
    wait_until_counted(prom, ledger)
    prom.wait_for("min(mailrec_redis_up) == 0", bool)
    time.sleep(3)  # three more scrapes and rule evaluations (1 s each) on unchanged counters
    (last,) = prom.query("max(timestamp(mailrec_impressions_total))")
    return last["value"]


def by_query(queries: list[Query], name: str) -> Query:
    (found,) = [q for q in queries if q.name == name or q.name.endswith(f": {name} [A]")]
    return found


def test_every_dashboard_and_rule_expression_returns_data_and_the_true_ctr(stack: Stack) -> None:
    prom = stack.prometheus
    ledger = Ledger()
    assert healthcheck(stack.service.port) == 0
    wait_for_initial_series(prom)
    with httpx.Client(base_url=stack.service.url, timeout=30) as client:
        drive_traffic(Traffic(client, ledger), stack)
    assert set(ledger.impressions) == set(VARIANTS) and ledger.ctr("mail") < ledger.ctr("control")
    assert ledger.statuses[500] == 0
    at = wait_until_scraped(prom, ledger)

    queries = all_queries()
    results = {query: prom.query(query.concrete(WINDOW), at) for query in queries}
    no_data = [(q.name, r) for q, r in results.items() if q.name != "MailrecDown" and not finite(r)]
    assert not no_data, f"no (finite) data at {at}: {no_data}"
    values = {q.name: r for q, r in results.items()}  # (same-named quantile rules: any one)
    assert values["MailrecDown"] == []  # the service is up: this one comes at the end

    def per_variant(name: str) -> dict[str, float]:
        return {s["metric"]["variant"]: s["value"] for s in values[by_query(queries, name).name]}

    true_ctr = {v: ledger.ctr(v) for v in VARIANTS}
    for name in (
        "experiment_variant:mailrec_ctr:ratio_rate5m",
        "experiment_variant:mailrec_ctr:ratio_rate1h",
        "CTR by variant (time range)",
        "CTR by variant",
    ):
        assert per_variant(name) == pytest.approx(true_ctr, rel=1e-9), name
    for name in ("experiment:mailrec_ctr_lift:ratio_rate1h", "Lift of mail over control (time range)"):
        (lift,) = values[by_query(queries, name).name]
        assert lift["value"] == pytest.approx(ledger.lift(), rel=1e-9), name
    assert per_variant("Impressions (time range)") == pytest.approx(dict(ledger.impressions), rel=1e-9)
    assert per_variant("Clicks (time range)") == pytest.approx(dict(ledger.clicks), rel=1e-9)

    # Alerts, evaluated by Prometheus itself: what the traffic caused, and nothing else.
    (error_ratio,) = values["job:mailrec_http_requests:error_ratio_rate5m"]
    assert error_ratio["value"] > 0.05 and error_ratio["metric"]["job"] == SERVICE_JOB
    assert values["MailrecRedisDown"] and values["MailCtrBelowControl"] and values["MailrecHighErrorRate"]
    assert values[by_query(queries, "Redis up").name][0]["value"] == 0
    evaluated = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(evaluated) == len(queries) - len(dashboard_queries())
    unhealthy = {r["name"]: r.get("lastError") for r in evaluated if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    states = {r["name"]: r for r in evaluated if r["type"] == "alerting"}
    for alert in ("MailrecRedisDown", "MailCtrBelowControl", "MailrecHighErrorRate"):
        assert states[alert]["state"] in ("pending", "firing"), alert
    assert states["MailrecDown"]["state"] == "inactive"

    # The model table shows what /models says each variant serves.
    table = values[by_query(queries, "Model versions").name]
    models = httpx.get(f"{stack.service.url}/models").json()["models"]
    served = {m["variant"]: m["model_version"] for m in models}
    assert {s["metric"]["variant"]: s["metric"]["model_version"] for s in table} == served

    # The service goes away: the target is down, and MailrecDown's expression returns data.
    stack.service.stop()
    assert healthcheck(stack.service.port) == 1
    prom.wait_for(f'up{{job="{SERVICE_JOB}"}} == 0', bool)
    (down,) = [q for q in queries if q.name == "MailrecDown"]
    assert finite(prom.query(down.expr))
