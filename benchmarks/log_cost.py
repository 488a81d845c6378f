"""CPU cost of the request log line (service.logs), JSON and text, against the same calls with
the line turned off (MAILREC_LOG_LEVEL=WARNING), measured in the same run.

    python -m benchmarks.log_cost [--requests 20000] [--rounds 5]

Each request does what the service's request path does for logging: a fresh field set, the
fields the recommend step notes (variant, model version, cold start, cache outcome), and the line
itself (method, route, status, latency, request id) through the service's formatter into a
stream handler on /dev/null (what a pipe to a log collector costs on top is not measured).
Process CPU per request, median over rounds that alternate the settings.
Writes benchmarks/results/log-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.command import command_line
from service import logs

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = (("off (WARNING)", "json", "WARNING"), ("json", "json", "INFO"), ("text", "text", "INFO"))


def _request() -> None:
    token = logs.start_request()
    logs.note(variant="mail", model_version="0123456789ab", cold_start=True, cache="hit")
    logs.end_request(
        token, method="POST", route="/recommend", status=200, latency_ms=1.234, request_id="0123456789abcdef"
    )


def measure(fmt: str, level: str, n: int) -> float:
    """Process CPU microseconds per request for `n` requests logged in `fmt` at `level`."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - closed below
    handler.setFormatter(logs.FORMATTERS[fmt]())
    logs.REQUESTS.addHandler(handler)
    logs.REQUESTS.setLevel(level)
    try:
        start = time.process_time()
        for _ in range(n):
            _request()
        return (time.process_time() - start) / n * 1e6
    finally:
        logs.REQUESTS.removeHandler(handler)
        handler.stream.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "log-cost")
    args = parser.parse_args(argv)
    logs.REQUESTS.propagate = False
    runs: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
    for _ in range(args.rounds):
        for name, fmt, level in SETTINGS:
            runs[name].append(measure(fmt, level, args.requests))
    medians = {name: statistics.median(v) for name, v in runs.items()}
    off = medians[SETTINGS[0][0]]
    result: dict[str, Any] = {
        "command": command_line("benchmarks.log_cost", argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "python": platform.python_version(),
        "requests_per_round": args.requests,
        "us_per_request": runs,
        "median_us": medians,
        "added_us": {name: m - off for name, m in medians.items()},
    }
    lines = [
        "# Request log line: CPU per request",
        "",
        f"`{result['command']}` on {result['date']} ({result['machine']['cores']} cores, Python "
        f"{result['python']}); {args.rounds} alternating rounds of {args.requests:,} requests; process "
        "CPU per request, median. Reference: the same calls with the line off (level WARNING).",
        "",
        "| setting | us per request | added by the line |",
        "|---|---:|---:|",
        *(f"| {name} | {m:.1f} | {m - off:+.1f} |" for name, m in medians.items()),
    ]
    md = "\n".join(lines) + "\n"
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(result, indent=1))
    args.out.with_name(args.out.name + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
