"""Prometheus configuration, rules and Grafana provisioning, checked without running them.

promtool validates the configuration and the rules and runs the rules' unit tests; the dashboard
is linted the way grafana/dashboard-linter would (fixed datasource uid, units, $__rate_interval,
descriptions) and every metric and label a query names must be one the service exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram

from service.metrics import Metrics
from tests.deploy.stack import (
    DATASOURCES_DIR,
    PROMETHEUS_CONFIG,
    RULES_FILE,
    RULES_TEST_FILE,
    Query,
    all_queries,
    dashboard_queries,
    dashboards,
    load_yaml,
    panels,
    promql_names,
    rules,
    unaggregated,
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not on PATH: `bash scripts/system-deps.sh prometheus` (make test does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_config() -> None:
    out = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RULES_FILE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests() -> None:
    out = promtool("test", "rules", str(RULES_TEST_FILE))
    assert out.returncode == 0, out.stdout + out.stderr


def exported_series() -> dict[str, set[str]]:
    """Every series name the service can export, with its label names (scrape labels added)."""
    series: dict[str, set[str]] = {"up": {"job", "instance"}}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        labels = {*metric._labelnames, "job", "instance"}
        name = metric._name
        if isinstance(metric, Counter):
            series[f"{name}_total"] = labels
        elif isinstance(metric, Histogram):
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def recorded_series() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules():
        if "record" in rule:
            labels = promql_names(rule["expr"]).labels | set(rule.get("labels", {}))
            out.setdefault(rule["record"], set()).update(labels)
    return out


@pytest.mark.parametrize("query", all_queries(), ids=lambda q: f"{q.source}:{q.name}")
def test_queries_use_only_exported_metrics_and_labels(query: Query) -> None:
    known = {**exported_series(), **recorded_series()}
    names = promql_names(query.expr)
    unknown = names.metrics - set(known)
    assert not unknown, f"not exported by the service nor recorded: {sorted(unknown)}"
    allowed = set().union(*(known[m] for m in names.metrics))
    assert names.labels <= allowed, f"labels {sorted(names.labels - allowed)} are on none of its metrics"


def test_metric_reader_finds_names_and_labels() -> None:
    names = promql_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route="/a:b",m=~"x|y"}[5m])))'
        ' / ignoring (variant) a:b:c and on() absent(up{job="j"} == 1)'
    )
    assert names.metrics == {"x_bucket", "a:b:c", "up"}
    assert names.labels == {"le", "route", "m", "variant", "job"}


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.name)
def test_dashboard_queries_sum_over_replicas(query: Query) -> None:
    """Prometheus scrapes every replica (`docker compose up --scale service=N`): a panel adds
    them up (or picks one by max/min), else it shows one line per replica where it means one."""
    assert not unaggregated(query.expr), f"not aggregated over instances: {unaggregated(query.expr)}"


def test_aggregation_reader_finds_bare_metrics() -> None:
    expr = (
        'sum by (variant) (rate(a_total{x="sum(b)"}[5m])) / b + max(c) + x:y:z'
        " + histogram_quantile(0.5, sum by (le) (rate(d_bucket[1m]))) + rate(e_total[1m])"
    )
    assert unaggregated(expr) == {"b", "e_total"}


# --- Grafana ----------------------------------------------------------------------------------


def datasource() -> dict[str, Any]:
    found = [d for f in sorted(DATASOURCES_DIR.glob("*.yml")) for d in load_yaml(f)["datasources"]]
    assert len(found) == 1, found
    return found[0]


def test_datasource_has_a_fixed_uid_and_the_scrape_interval() -> None:
    ds = datasource()
    assert ds["type"] == "prometheus" and ds["uid"] and ds["isDefault"]
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == scrape, "$__rate_interval needs the scrape interval"


def test_dashboards_reference_only_the_provisioned_datasource() -> None:
    uid = datasource()["uid"]
    for path, dash in dashboards().items():
        text = path.read_text()
        assert "${DS" not in text and "__inputs" not in dash, f"{path.name} was exported for sharing"
        assert dash["uid"] and dash["title"]
        for panel in panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]


def test_panels_are_unique_described_with_units_and_do_not_overlap() -> None:
    for path, dash in dashboards().items():
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in panels(dash):
            pos = panel["gridPos"]
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert pos["x"] + pos["w"] <= 24 and not area & cells, f"{panel['title']} overlaps"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel.get("description"), f"{panel['title']}: no description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"


def test_dashboard_windows_are_grafana_macros() -> None:
    for query in dashboard_queries():
        windows = set(re.findall(r"\[([^\]]+)\]", query.expr))
        assert windows <= {"$__rate_interval", "$__range"}, f"{query.name}: windows {windows}"


def test_dashboard_covers_the_ab_test_and_the_service() -> None:
    by_panel: dict[str, str] = {}
    for dash in dashboards().values():
        for panel in panels(dash):
            by_panel[panel["title"]] = "\n".join(t["expr"] for t in panel.get("targets", []))
    every = "\n".join(by_panel.values())

    def panel_with(*needles: str) -> str:
        found = [t for t, e in by_panel.items() if all(n in e for n in needles)]
        assert found, f"no panel queries {needles}"
        return found[0]

    # per variant: CTR, lift of mail over control, impressions, clicks
    for metric in ("mailrec_clicks_total", "mailrec_impressions_total"):
        panel_with(metric, "by (variant)")
    panel_with("mailrec_clicks_total", "mailrec_impressions_total", "by (variant)", "/")
    panel_with('variant="mail"', 'variant="control"')
    panel_with("mailrec_ctr_lift")
    # service: rate, errors, latency quantiles, cold-start share, cache, inference, Redis, models
    panel_with("mailrec_http_requests_total", "by (route)")
    panel_with("mailrec_http_requests_total", 'status=~"5..')
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le) (rate(mailrec_http_request_duration_seconds_bucket" in every
        )
    panel_with("mailrec_recommendations_total", 'cold_start="true"', "by (variant)")
    panel_with("mailrec_cache_requests_total", 'result="hit"')
    panel_with("mailrec_inference_duration_seconds_bucket", "by (le, tower, provider)")
    panel_with("mailrec_redis_up")
    assert by_panel[panel_with("mailrec_model_info == 1")]


def test_units_match_what_the_panels_show() -> None:
    for dash in dashboards().values():
        for panel in panels(dash):
            exprs = " ".join(t["expr"] for t in panel.get("targets", []))
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if "histogram_quantile" in exprs:
                assert unit == "s", panel["title"]
            if "CTR" in panel["title"] or "share" in panel["title"] or "ratio" in panel["title"]:
                assert unit == "percentunit", panel["title"]


# --- rules ---------------------------------------------------------------------------------


def test_rules_cover_ctr_latency_and_the_three_alerts() -> None:
    recorded = {r["record"]: r for r in rules() if "record" in r}
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert "clicks_total" in recorded["experiment_variant:mailrec_ctr:ratio_rate5m"]["expr"]
    quantiles = {
        r["labels"]["quantile"]
        for r in rules()
        if r.get("record") == "route:mailrec_http_request_duration_seconds:quantile_rate5m"
    }
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert {"MailrecHighErrorRate", "MailrecRedisDown", "MailCtrBelowControl"} <= set(alerts)
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("page", "ticket", "warning"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert alert.get("for"), f"{name} fires on a single evaluation"
