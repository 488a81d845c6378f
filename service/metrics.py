"""Prometheus metrics, prefix `mailrec_`, bounded labels only (never a user, request or item id).

One `Metrics` object per app, on its own registry (tests build many apps). With several worker
processes (`PROMETHEUS_MULTIPROC_DIR` set) the values live in that directory and `/metrics`
aggregates every process.

CTR per variant in PromQL:
    sum by (experiment, variant) (rate(mailrec_clicks_total[5m]))
  / sum by (experiment, variant) (rate(mailrec_impressions_total[5m]))
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
IMPRESSION_WRITE_RESULTS = ("stored", "failed", "skipped")
M = TypeVar("M", bound=MetricWrapperBase)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class Metrics:
    def __init__(self) -> None:
        self._current_model: dict[str, tuple[str, ...]] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mailrec_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mailrec_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "mailrec_inference_duration_seconds",
            "ONNX Runtime time per call, by tower and provider.",
            ["tower", "provider"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "mailrec_cache_requests",
            "Virtual-behavior cache lookups: hit, miss, error or bypass (circuit open).",
            ["result"],
            registry=r,
        )
        self.cold_scores = Counter(
            "mailrec_cold_scores",
            "Cold requests answered from the model's remembered whole-catalog scores for their "
            "attributes and context (hit) or scored as usual (miss); fill: a memo fill started.",
            ["variant", "result"],
            registry=r,
        )
        self.redis_up = Gauge(
            "mailrec_redis_up",
            "1 when the last Redis call succeeded.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.breaker_open = Gauge(
            "mailrec_circuit_breaker_open",
            "1 while the Redis circuit breaker skips Redis.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.recommendations = Counter(
            "mailrec_recommendations",
            "Recommendation responses by variant and whether the user was cold (virtual behavior used).",
            ["experiment", "variant", "cold_start"],
            registry=r,
        )
        self.impressions = Counter(
            "mailrec_impressions",
            "Items returned in recommendation responses.",
            ["experiment", "variant", "source"],
            registry=r,
        )
        self.clicks = Counter(
            "mailrec_clicks",
            "Clicks credited to the variant that served the impression (each counted once).",
            ["experiment", "variant", "source"],
            registry=r,
        )
        self.assignments = Counter(
            "mailrec_assignments",
            "Variant assignments; source is hash or override (X-Variant).",
            ["experiment", "variant", "source"],
            registry=r,
        )
        self.impression_writes = Counter(
            "mailrec_impression_writes",
            "Impression records of /recommend responses: stored, failed (Redis did not answer the "
            "write) or skipped (Redis had not answered the request, so no write was tried). A "
            "response whose impression is not stored has impression_id null: no click on it counts.",
            ["result"],
            registry=r,
        )
        for result in IMPRESSION_WRITE_RESULTS:
            self.impression_writes.labels(result)
        self.feedback = Counter(
            "mailrec_feedback",
            "Feedback events by outcome.",
            ["result"],
            registry=r,
        )
        self.model_info = Gauge(
            "mailrec_model_info",
            "1 for each variant's loaded model, with its version, the provider ONNX Runtime really uses "
            "and the precision of its ranking graph.",
            ["variant", "model", "model_version", "ranker", "provider", "precision"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "mailrec_model_reloads",
            "Bundle reloads by variant and result.",
            ["variant", "result"],
            registry=r,
        )
        self.tasks = Gauge(
            "mailrec_asyncio_tasks",
            "Asyncio tasks alive in the process when /metrics was last served by it (a leak shows "
            "as growth while the traffic stays the same).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "mailrec_rejected_requests",
            "Requests refused with a 4xx, by reason.",
            ["reason"],
            registry=r,
        )

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, memoised for the request path (labels are bounded; a
        dict lookup costs a small part of a `labels()` call: benchmarks/results/serving-notes.md)."""
        key = (id(metric), values)
        found: M | None = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def init_experiment(self, experiment: str, variants: Iterable[str]) -> None:
        """Every experiment/variant series at 0 from the start: rate() and increase() cannot see
        what a counter counted before its first scrape, so a young experiment's CTR would be off."""
        for variant in variants:
            for source in ("hash", "override"):
                for counter in (self.impressions, self.clicks, self.assignments):
                    counter.labels(experiment, variant, source)
            for cold in ("true", "false"):
                self.recommendations.labels(experiment, variant, cold)

    def set_model(
        self, variant: str, model: str, version: str, ranker: str, provider: str, precision: str = "fp32"
    ) -> None:
        """1 for the model serving `variant` now, 0 for the one it replaced.

        Old series drop to 0 rather than vanish: in multiprocess mode a removed series lingers in
        the other workers' files, so dashboards select `mailrec_model_info == 1`.
        """
        labels = (variant, model, version, ranker, provider, precision)
        old = self._current_model.get(variant)
        if old is not None and old != labels:
            self.model_info.labels(*old).set(0)
        self.model_info.labels(*labels).set(1)
        self._current_model[variant] = labels

    def exposition(self) -> bytes:
        """The text format for /metrics: this registry, or every worker's in multiprocess mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
