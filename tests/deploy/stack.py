"""The deployment's own files, read as data, and a real Prometheus for tests.

Docker does not run on the test machines, so the pieces of docker-compose.yml run natively:
Debian's `prometheus` binary with the repository's prometheus.yml and rules.yml, where only the
intervals and the scrape targets change (the targets become the local service).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.harness.processes import Proc, free_port, http_ok

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_DIR = DOCKER / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_FILE = PROMETHEUS_DIR / "rules.yml"
RULES_TEST_FILE = PROMETHEUS_DIR / "rules_test.yml"
GRAFANA_DIR = DOCKER / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_DIR = GRAFANA_DIR / "provisioning" / "datasources"
SERVICE_JOB = "mailrec"
# Grafana's macros in dashboard queries; tests replace them with a concrete window.
GRAFANA_MACROS = ("$__rate_interval", "$__range")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the deployment and where it comes from."""

    source: str  # "dashboard", "record" or "alert"
    name: str  # panel title / refId, recorded series, or alert name
    expr: str

    def concrete(self, window: str) -> str:
        """The expression with Grafana's macros replaced by `window` (e.g. "600000ms")."""
        expr = self.expr
        for macro in GRAFANA_MACROS:
            expr = expr.replace(macro, window)
        return expr


def dashboard_queries() -> list[Query]:
    return [
        Query("dashboard", f"{path.name}: {panel['title']} [{target['refId']}]", target["expr"])
        for path, dash in dashboards().items()
        for panel in panels(dash)
        for target in panel.get("targets", [])
    ]


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES_FILE)["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [
        Query("record", r["record"], r["expr"]) if "record" in r else Query("alert", r["alert"], r["expr"])
        for r in rules()
    ]


def all_queries() -> list[Query]:
    return dashboard_queries() + rule_queries()


# --- a small PromQL reader: enough to list the metrics and labels an expression uses -----------

PROMQL_WORDS = frozenset(
    """sum min max avg count stddev stdvar topk bottomk quantile count_values group
    rate irate increase delta idelta deriv histogram_quantile absent absent_over_time
    timestamp time vector scalar clamp_min clamp_max abs ceil floor round label_replace
    label_join sort sort_desc avg_over_time max_over_time min_over_time sum_over_time
    count_over_time last_over_time changes resets
    and or unless bool by without on ignoring group_left group_right offset inf nan""".split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)")


@dataclass(frozen=True)
class PromqlNames:
    metrics: frozenset[str]
    labels: frozenset[str]  # labels used in matchers and in by/on/... clauses


def promql_names(expr: str) -> PromqlNames:
    """The metric names and label names an expression refers to."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for match in _CLAUSE.finditer(text):
        labels.update(x.strip() for x in match.group(2).split(",") if x.strip())
    text = _CLAUSE.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        labels.update(_MATCHER_LABEL.findall(match.group(1)))
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", text))
    metrics = {m for m in _IDENT.findall(text) if m.lower() not in PROMQL_WORDS}
    return PromqlNames(frozenset(metrics), frozenset(labels))


AGGREGATIONS = frozenset("sum min max avg count stddev stdvar topk bottomk quantile group".split())
_CLAUSE_WORDS = frozenset("by without on ignoring group_left group_right".split())
_TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*|[()]")


def unaggregated(expr: str) -> set[str]:
    """The metrics of `expr` that no aggregation (sum, max, ...) encloses: with N replicas, each
    of them is N series, one per instance. Recorded series (`level:metric:ops`) count as
    aggregated: their rules are checked themselves."""
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr)))
    stack: list[str] = []  # per open parenthesis: "agg", "clause" or "call"
    pending = previous = ""
    out: set[str] = set()
    for token in _TOKEN.findall(text):
        if token == "(":
            kind = "clause" if previous in _CLAUSE_WORDS else "agg" if pending else "call"
            pending = "" if kind == "agg" else pending
            stack.append(kind)
        elif token == ")":
            stack.pop()
        elif token.lower() in AGGREGATIONS:
            pending = token
        elif stack[-1:] != ["clause"] and token.lower() not in PROMQL_WORDS and ":" not in token:
            if "agg" not in stack:
                out.add(token)
        previous = token.lower()
    return out


# --- Prometheus, natively --------------------------------------------------------------------


def local_config(target: str, listen: str, interval: str) -> dict[str, Any]:
    """The repository's prometheus.yml with only intervals and targets changed.

    Rule files become absolute paths to the repository's own; the service job scrapes `target`
    instead of discovering `service` in Docker's DNS; the self-scrape job scrapes `listen`.
    """
    config: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [target if job["job_name"] == SERVICE_JOB else listen]}]
    return config


class PrometheusServer:
    """`prometheus` on a free loopback port, on a copy of the repository's configuration."""

    def __init__(self, target: str, interval: str = "1s") -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mailrec-test-prometheus-"))
        self.config = local_config(target, f"127.0.0.1:{self.port}", interval)
        self.log = self.dir / "prometheus.log"
        self.proc: Proc | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not on PATH: `bash scripts/system-deps.sh prometheus`")
        config = self.dir / "prometheus.yml"
        config.write_text(json.dumps(self.config))  # YAML is a superset of JSON
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = Proc("prometheus", args, self.log)
        try:
            self.proc.wait_until(lambda: http_ok(f"{self.url}/-/ready"), timeout)
        except RuntimeError:
            self.close()
            raise
        return self

    def api(self, path: str, **params: str) -> Any:
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result as a list of {"metric": labels, "value": float}."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        return [{"metric": s["metric"], "value": float(s["value"][1])} for s in data["result"]]

    def by(self, expr: str, label: str, at: float | None = None) -> dict[str, float]:
        """The query's values keyed by one label."""
        return {s["metric"].get(label, ""): s["value"] for s in self.query(expr, at)}

    def wait_for(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting on {expr!r}; last result {result}")

    def close(self) -> None:
        self.http.close()
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def finite(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(math.isfinite(s["value"]) for s in result)
