"""`python -m service` (or `mailrec-serve`): uvicorn with MAILREC_* settings, one or several workers.

With several workers, one embedded Redis (MAILREC_REDIS_EMBEDDED=1, no MAILREC_REDIS_URL) is
started here and shared, and Prometheus runs in multiprocess mode so /metrics aggregates every
worker. With neither setting it exits at once (status 2) with the reason.
"""

from __future__ import annotations

import argparse
import logging.config
import os
import shutil
import sys
import tempfile

import uvicorn

from service import logs
from service.cache import EmbeddedRedis
from service.config import Settings, redis_problem

# uvicorn's connection handling, as tests/faults/test_slow_clients.py holds it: an idle keep-alive
# connection is closed after KEEP_ALIVE_S; a request body slower than MAILREC_BODY_TIMEOUT_S is cut
# by the app (uvicorn has no body or header timeout); no limit_concurrency, since uvicorn counts
# idle connections against it too and would refuse real clients (503) while idle ones are open.
KEEP_ALIVE_S = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mailrec-serve",
        description="Serve the recommendation API (uvicorn, service.main:create_app). Every setting is "
        "a MAILREC_* environment variable; these flags override three of them.",
        epilog="All settings: README's configuration table, or `python -m service.config`. Needs "
        "MAILREC_REDIS_URL, or MAILREC_REDIS_EMBEDDED=1 for a one-process demo (else exit status 2).",
    )
    parser.add_argument("--host", help="address to bind (MAILREC_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (MAILREC_PORT; default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (MAILREC_WORKERS; default 1)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """MAILREC_* settings, overridden by the flags given."""
    return Settings(**{k: v for k, v in vars(args).items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    settings = settings_from(parse_args(argv))
    problem = redis_problem(settings)
    if problem is not None:
        print(f"mailrec: {problem}", file=sys.stderr)  # noqa: T201 - the CLI's own error
        sys.exit(2)
    log_config = logs.dict_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    embedded = None
    metrics_dir = None
    if settings.workers > 1:
        if settings.redis_url is None:
            embedded = EmbeddedRedis()
            os.environ["MAILREC_REDIS_URL"] = embedded.url
            logging.getLogger("service").info(
                "embedded Redis for %d workers at %s", settings.workers, embedded.url
            )
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="mailrec-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            log_config=log_config,
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    finally:
        if embedded is not None:
            embedded.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
