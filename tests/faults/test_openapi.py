"""schemathesis against the service's own /openapi.json: generated requests, valid and invalid,
to every operation; no 5xx, every error in the documented {"error", "detail"} shape, and every
response as the schema documents it (status code, content type, body).

Bounded: EXAMPLES requests per operation and generation mode, derandomized (the same requests
every run), on the loopback only. No stateful phase: the schema has no links between operations
(an impression id is not one a generator could guess anyway).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import Case, CheckContext, CheckFunction, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import Live

pytestmark = pytest.mark.slow  # schemathesis: many generated cases per operation

EXAMPLES = 100


def error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx and 5xx body is JSON {"error": <code>, "detail": ...}, nothing else."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, f"error body {body!r}"
    assert isinstance(body["error"], str) and body["error"], f"error code {body['error']!r}"
    return True


CHECKS: list[CheckFunction] = [
    not_a_server_error,
    error_shape,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Fuzzed:
    operations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


def fuzz(url: str, examples: int = EXAMPLES) -> Fuzzed:
    """Every operation of `url`'s /openapi.json, `examples` valid and `examples` invalid requests
    each, every response checked; every disagreement collected (not only the first)."""
    schema = schemathesis.openapi.from_dict(httpx.get(url + "/openapi.json", timeout=30).json())
    out = Fuzzed()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        out.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
            run_cases(url, operation.as_strategy(generation_mode=mode), checks, examples, out)
    return out


def run_cases(
    url: str, cases: SearchStrategy[Case[Any]], checks: list[CheckFunction], examples: int, out: Fuzzed
) -> None:
    @given(case=cases)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Case[Any]) -> None:
        response = case.call(base_url=url, timeout=30)
        out.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as exc:  # every disagreement, not only the first
            out.failures.extend(f"{case.as_curl_command()}\n  -> {f}" for f in exc.exceptions)

    try:
        exercise()
    except Unsatisfiable:  # an operation with nothing to make invalid (no parameters, no body)
        pass


def test_the_api_against_its_own_openapi(live: Live, record: Callable[[str, str, str], None]) -> None:
    fuzzed = fuzz(live.url)
    record(
        "schemathesis against /openapi.json (valid and invalid requests to every operation)",
        'no 5xx; every error is the documented JSON shape {"error", "detail"}',
        f"{fuzzed.requests} requests over {fuzzed.operations} operations ({EXAMPLES} per operation and "
        f"mode, derandomized), statuses {dict(sorted(fuzzed.statuses.items()))}; "
        f"{fuzzed.server_errors} 5xx; {len(fuzzed.failures)} disagreeing with the schema or the error shape",
    )
    assert not fuzzed.failures, "\n\n".join(fuzzed.failures[:10])
