"""The service's /metrics text read back, through prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str, name: str, **labels: str) -> Iterator[Sample]:
    """The samples named `name` (e.g. `mailrec_clicks_total`) whose labels include `labels`."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                yield sample


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(s.value for s in samples(text, name, **labels))


def metric_by(text: str, name: str, by: str, **labels: str) -> dict[str, float]:
    """Sums of the samples of `name` whose labels include `labels`, keyed by the label `by`."""
    out: dict[str, float] = {}
    for s in samples(text, name, **labels):
        out[s.labels[by]] = out.get(s.labels[by], 0.0) + s.value
    return out
