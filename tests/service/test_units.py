"""The service's steps on their own: assignment, top-k, breaker, providers, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema_rs  # schemathesis's own JSON Schema validator (tests/faults)
import numpy as np
import pytest

from service.cache import CircuitBreaker, RecentVectors
from service.errors import UnknownVariant
from service.experiments import Experiment, ExperimentFileError, Variant, default_experiment, load_experiment
from service.inference import CPU, CUDA, DeviceUnavailable, SessionOptions, requested_providers
from service.metrics import Metrics
from service.recommend import SORT_ALL, top_k


def _experiment(weights: dict[str, float]) -> Experiment:
    return Experiment(
        "exp", "salt-1", tuple(Variant(n, w, Path(n)) for n, w in weights.items()), frozenset(weights)
    )


@pytest.mark.parametrize(
    "weights", [{"control": 50, "mail": 50}, {"control": 80, "mail": 20}, {"a": 1, "b": 1, "c": 2}]
)
def test_split_over_20000_users_is_within_2_points_of_the_weights(weights: dict[str, float]) -> None:
    exp = _experiment(weights)
    counts = dict.fromkeys(weights, 0)
    for i in range(20_000):
        counts[exp.assign(f"user-{i}")[0]] += 1
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / 20_000 - weight / total) < 0.02, counts


def test_assignment_is_sticky_and_salted() -> None:
    exp = _experiment({"control": 50, "mail": 50})
    assert {exp.assign("u-7")[0] for _ in range(1000)} == {exp.assign("u-7")[0]}
    other = Experiment("exp", "salt-2", exp.variants, exp.overridable)
    moved = sum(exp.assign(f"u{i}")[0] != other.assign(f"u{i}")[0] for i in range(2000))
    assert 800 < moved < 1200  # a new salt reshuffles about half the users
    assert exp.assign("u-7", "mail") == ("mail", "override")
    with pytest.raises(UnknownVariant):
        exp.assign("u-7", "other")


def test_experiment_file(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text(
        '[experiment]\nname = "e"\nsalt = "s"\noverride = ["mail"]\n'
        '[[experiment.variants]]\nname = "control"\nweight = 90\nbundle = "b/control"\n'
        '[[experiment.variants]]\nname = "mail"\nweight = 10\nbundle = "/abs/mail"\n'
    )
    exp = load_experiment(f)
    assert exp.names == ["control", "mail"] and exp.overridable == {"mail"}
    assert exp.variants[0].bundle == (tmp_path / "b" / "control").resolve()
    assert exp.variants[1].bundle == Path("/abs/mail")
    with pytest.raises(ExperimentFileError, match="does not exist"):
        load_experiment(tmp_path / "missing.toml")
    f.write_text(
        '[experiment]\nname = "e"\n[[experiment.variants]]\nname = "a"\nbundle = "x"\n'
        '[[experiment.variants]]\nname = "a"\nbundle = "y"\n'
    )
    with pytest.raises(ExperimentFileError, match="unique"):
        load_experiment(f)
    assert default_experiment(Path("bundles")).names == ["control", "mail"]
    assert {v.kind for v in exp.variants} == {"model"}  # the default kind
    f.write_text(
        '[experiment]\nname = "e"\n[[experiment.variants]]\nname = "pop"\nkind = "popularity"\nbundle = "x"\n'
    )
    assert load_experiment(f).variants[0].kind == "popularity"
    f.write_text(
        '[experiment]\nname = "e"\n[[experiment.variants]]\nname = "p"\nkind = "random"\nbundle = "x"\n'
    )
    with pytest.raises(ExperimentFileError, match="unknown kind 'random'"):
        load_experiment(f)


def test_top_k_breaks_ties_by_item_id() -> None:
    rows = np.array([5, 1, 3, 2, 4], np.int64)
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1], np.float32)
    ids = np.array(["", "a", "e", "c", "d", "b"], dtype=object)  # row -> raw id
    rank = np.empty(len(ids), np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    best = top_k(scores, rows, 3, rank)
    assert ids[rows[best]].tolist() == ["a", "b", "c"]  # 0.9, then the 0.5 ties by id: b, c, e
    assert ids[rows[top_k(scores, rows, 10, rank)]].tolist() == ["a", "b", "c", "e", "d"]


@pytest.mark.parametrize("n", [7, SORT_ALL, SORT_ALL + 1, 1682])
def test_top_k_equals_a_full_sort_on_both_paths(n: int) -> None:
    rng = np.random.default_rng(n)
    rows = rng.permutation(np.arange(1, 2000))[:n]
    scores = (rng.integers(0, 20, n) / 20).astype(np.float32)  # many ties, at the cut too
    rank = rng.permutation(2000)
    want = sorted(range(n), key=lambda i: (-scores[i], rank[rows[i]]))[:10]
    assert top_k(scores, rows, 10, rank).tolist() == want


def test_circuit_breaker_opens_waits_and_probes_once() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=3, reset_s=5.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert not b.is_open
    b.failure()
    assert b.is_open and not b.allow()
    now[0] = 5.1
    assert b.allow() and not b.allow()  # half-open: a single trial call
    b.failure()
    assert b.is_open and not b.allow()  # the trial failed: open again
    now[0] = 10.3
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow()


def test_an_abandoned_trial_lets_the_next_call_try() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=1, reset_s=5.0, clock=lambda: now[0])
    b.failure()
    now[0] = 5.1
    assert b.allow() and not b.allow()
    b.abandon()  # the trial was cancelled: it decided nothing
    assert b.is_open and b.allow() and not b.allow()
    b.success()
    assert not b.is_open


def test_recent_vectors_expire_and_are_bounded() -> None:
    cache = RecentVectors(size=2, ttl_s=60)
    v = np.ones(3, np.float32)
    cache.put("a", v)
    cache.put("b", v)
    cache.put("c", v)
    assert cache.get("a") is None and cache.get("c") is not None
    expired = RecentVectors(size=2, ttl_s=-1)
    expired.put("a", v)
    assert expired.get("a") is None


def test_provider_selection() -> None:
    assert requested_providers("cpu", [CUDA, CPU]) == [CPU]
    assert requested_providers("auto", [CPU]) == [CPU]
    assert requested_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert requested_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(DeviceUnavailable, match="onnxruntime lists only"):
        requested_providers("cuda", [CPU])
    with pytest.raises(ValueError):
        requested_providers("tpu", [CPU])


class _FakeGpuOrt:
    """onnxruntime as onnxruntime-gpu behaves: CUDA requested, and CUDA granted only if `has_gpu`;
    otherwise the session silently falls back to CPU. Only the GPU is mocked: the model really runs
    on the CPU session underneath."""

    def __init__(self, real: Any, has_gpu: bool) -> None:
        self.real = real
        self.has_gpu = has_gpu
        self.listed = real.get_available_providers()
        self.asked: list[Any] = []  # the providers argument of each InferenceSession

    def get_available_providers(self) -> list[str]:
        return list(self.listed)

    def InferenceSession(self, path: str, sess_options: Any = None, providers: Any = None) -> Any:  # noqa: N802
        session = self.real.InferenceSession(path, sess_options=sess_options, providers=[CPU])
        self.asked.append(providers)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        granted = [CUDA, CPU] if self.has_gpu and CUDA in names else [CPU]

        class Session:
            def __getattr__(self, name: str) -> Any:
                return getattr(session, name)

            def get_providers(self) -> list[str]:
                return granted

        return Session()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("has_gpu", [False, True])
def test_the_session_we_really_get_decides_the_provider(
    tiny_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, has_gpu: bool
) -> None:
    import onnxruntime as ort

    import service.inference as inference
    from service.contract import load_bundle

    bundle = load_bundle(tiny_bundle("mail", "base"))
    fake = _FakeGpuOrt(ort, has_gpu)
    fake.listed = [CUDA, CPU]  # onnxruntime-gpu lists CUDA even without a GPU
    monkeypatch.setattr(inference, "ort", fake)
    auto = inference.Towers(bundle, SessionOptions(device="auto"))
    assert auto.provider == ("cuda" if has_gpu else "cpu")
    if has_gpu:
        assert inference.Towers(bundle, SessionOptions(device="cuda")).provider == "cuda"
    else:
        with pytest.raises(DeviceUnavailable, match="asked for CUDA"):
            inference.Towers(bundle, SessionOptions(device="cuda"))


def test_model_info_has_one_live_series_per_variant() -> None:
    m = Metrics()
    m.set_model("mail", "mail", "v1", "base", "cpu")
    m.set_model("mail", "mail", "v2", "base", "cpu", "int8")
    text = m.exposition().decode()
    assert (
        'mailrec_model_info{model="mail",model_version="v2",precision="int8",provider="cpu",ranker="base",'
        'variant="mail"} 1.0' in text
    )
    assert 'model_version="v1",precision="fp32",provider="cpu",ranker="base",variant="mail"} 0.0' in text


def test_metric_children_are_memoised_and_the_same_as_labels() -> None:
    from service.metrics import Metrics

    m = Metrics()
    child = m.child(m.requests, "/recommend", "POST", "200")
    assert child is m.child(m.requests, "/recommend", "POST", "200")
    assert child is m.requests.labels("/recommend", "POST", "200")
    assert m.child(m.latency, "/recommend", "POST") is not m.child(m.latency, "/feedback", "POST")


def test_fast_path_renders_an_unexpected_error_as_the_app_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /recommend runs in front of FastAPI's error layers: it logs and renders a 500 itself,
    and the metrics middleware counts it under the route's template."""
    from service import plumbing
    from service.config import Settings
    from service.main import create_app

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(plumbing, "recommend", broken)
    app = create_app(Settings())
    metrics: Metrics = app.front.metrics  # type: ignore[attr-defined]
    app.state.mailrec = SimpleNamespace(ready=True, metrics=metrics)  # no lifespan: no bundles

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            return await client.post("/recommend", json={"user_id": "u1"})

    resp = asyncio.run(post())
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal", "detail": "unexpected error; see the service log"}
    assert "unhandled error on POST /recommend" in caplog.text and "boom" in caplog.text
    text = metrics.exposition().decode()
    assert 'mailrec_http_requests_total{method="POST",route="/recommend",status="500"} 1.0' in text


def test_not_ready_is_the_documented_503() -> None:
    """Before its bundles are loaded, /recommend answers 503 `not_ready` in the documented shape."""
    from service.config import Settings
    from service.main import create_app

    app = create_app(Settings())
    app.state.mailrec = SimpleNamespace(ready=False, metrics=app.front.metrics)  # type: ignore[attr-defined]

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            return await client.post("/recommend", json={"user_id": "u1"})

    resp = asyncio.run(post())
    assert resp.status_code == 503 and resp.json()["error"] == "not_ready"
    doc = app.openapi()
    documented = doc["paths"]["/recommend"]["post"]["responses"]["503"]["content"]["application/json"]
    schema = {**documented["schema"], "components": doc["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(resp.json())


def test_log_lines_json_and_text() -> None:
    from service.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord(
        "service.requests", logging.INFO, __file__, 1, "POST %s", ("/recommend",), None
    )
    record.fields = {"route": "/recommend", "status": 200, "cold_start": True}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /recommend" and line["status"] == 200 and line["cold_start"] is True
    assert (
        TextFormatter().format(record).endswith("POST /recommend route=/recommend status=200 cold_start=True")
    )
