"""Run the serving benchmark; see `benchmarks.serving` for what it measures and how."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.harness.command import command_line
from benchmarks.harness.experiments import write_experiment
from benchmarks.harness.metrics import metric_by, metric_value
from benchmarks.harness.processes import RedisServer
from benchmarks.serving import profile, scenarios
from benchmarks.serving.bundles import REPO, bench_bundles
from benchmarks.serving.loadgen import Load, WrkResult, run_wrk, wrk_binary
from benchmarks.serving.openloop import OpenLoopResult
from benchmarks.serving.procs import cpu_seconds, start_floor, start_service
from benchmarks.serving.report import markdown

RESULTS = REPO / "benchmarks" / "results"
SERVICE_CPU, LOAD_CPU = "0", "1"
QUIET_LOAD = 0.5
KNEE_P99 = 5  # the knee: p99 above this many times its lowest-load value
# --int8: these scenarios again on a service serving the int8 ranker (MAILREC_RANKER_PRECISION),
# the cold-score memo off (to compare with the --no-memo rows);
# --no-memo: again with the cold-score memo off (MAILREC_COLD_SCORES_MB=0), every request scored
INT8_SCENARIOS = ("cold_cached_100", "cold_catalog")
# --search: the whole-catalog scenarios again with a cold user's candidates from the search, not
# the prior (MAILREC_RETRIEVE_PRIOR=0 and _CLICKED=0), the cold-score memo off (compare with the
# +no-memo rows)
SEARCH_SCENARIOS = ("cold_catalog", "cold_people_catalog", "cold_people_clicked_catalog")
# --full-ranker: the cold scenarios again with every user through ranker.onnx, not a no-behavior
# user through ranker_no_history.onnx (MAILREC_NO_HISTORY_GRAPH=0), the cold-score memo off
# (compare with the +no-memo rows)
FULL_RANKER_SCENARIOS = ("cold_cached_100", "cold_uncached_100", "cold_catalog")
NO_MEMO_SCENARIOS = (
    "cold_cached_100",
    "cold_uncached_100",
    "cold_catalog",
    "cold_people_100",
    "cold_people_catalog",
)


def _brief(r: WrkResult) -> str:
    return f"{r.rps:8.0f} req/s p50 {r.p50_ms:6.2f} ms p99 {r.p99_ms:6.2f} ms"


def metric_samples(url: str) -> dict[str, float]:
    """The counters the benchmark checks: cache lookups by result, the cold-score memo's hits,
    misses and fills, /recommend answers by status, impressions."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    cache = metric_by(text, "mailrec_cache_requests_total", "result")
    cold = metric_by(text, "mailrec_cold_scores_total", "result")
    statuses = metric_by(text, "mailrec_http_requests_total", "status", route="/recommend")
    return {
        **{f"cache_{result}": v for result, v in cache.items()},
        **{f"cold_{result}": v for result, v in cold.items()},
        **{f"recommend_{status}": v for status, v in statuses.items()},
        "impressions": metric_value(text, "mailrec_impressions_total"),
    }


def summarize_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """The counters that moved between two `metric_samples`, by how much."""
    return {k: int(v - before.get(k, 0.0)) for k, v in after.items() if v != before.get(k, 0.0)}


def capture(url: str, body: str, headers: dict[str, str], out: Path) -> int:
    """The service's answer to one request, kept for the floor to send back; returns its size."""
    req = urllib.request.Request(
        f"{url}/recommend", body.encode(), {"Content-Type": "application/json", **headers}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        payload = r.read()
        names = ("X-Request-Id", "X-Experiment", "X-Variant", "X-Model-Version")
        kept = {n: r.headers[n] for n in names if r.headers.get(n)}
    out.write_text(json.dumps({"body": payload.decode(), "headers": kept}))
    return len(payload)


def measure(
    url: str, pid: int, load: Load, connections: int, seconds: float, warmup: float, work: Path
) -> tuple[WrkResult, float]:
    """wrk's figures, and the server's CPU microseconds per completed request over the measured run:
    the cost behind req/s, which a busy or throttled host moves far less than it moves wall time."""
    if warmup > 0:
        run_wrk(url, load, connections, warmup, work, LOAD_CPU)
    cpu = cpu_seconds(pid)
    result = run_wrk(url, load, connections, seconds, work, LOAD_CPU)
    return result, (cpu_seconds(pid) - cpu) / max(result.requests, 1) * 1e6


def run_open_loop(
    url: str, load: Load, rate: float, seconds: float, warmup: float, work: Path
) -> OpenLoopResult:
    """One open-loop run (`benchmarks.serving.openloop`) at `rate` req/s, pinned to the load core."""
    assert load.body is not None
    body = work / "openloop-body.json"
    body.write_text(load.body)
    cmd = [sys.executable, "-m", "benchmarks.serving.openloop", "--url", url, "--path", load.path]
    cmd += ["--body-file", str(body), "--rate", f"{rate:.1f}", "--seconds", str(seconds)]
    cmd += ["--warmup", str(warmup), *[f"--header={k}={v}" for k, v in load.headers.items()]]
    done = subprocess.run(["taskset", "-c", LOAD_CPU, *cmd], capture_output=True, text=True, cwd=REPO)
    line = next((x for x in done.stdout.splitlines() if x.startswith("OPENLOOP_JSON ")), None)
    if line is None:
        raise RuntimeError(f"the open-loop generator printed no summary:\n{done.stdout}{done.stderr}")
    return OpenLoopResult(**json.loads(line.removeprefix("OPENLOOP_JSON ")))


def knee(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first offered load where queueing takes over: p99 above KNEE_P99 times its value at the
    lowest load, or fewer than 97% of the scheduled requests answered 2xx. None: no knee in the range.
    (Twice, the first rule tried, flagged the first doubling of a 3 ms p99 as the service went from
    43% to 83% busy, not where latency runs away.)"""
    if not runs:
        return None
    base = runs[0]["p99_ms"]
    for before, run in zip([None, *runs[:-1]], runs, strict=True):
        if run["p99_ms"] > KNEE_P99 * base or run["completed"] < 0.97 * run["scheduled"]:
            return {"at_fraction": run["fraction"], "below_fraction": before["fraction"] if before else None}
    return None


def open_loop_sweep(
    args: argparse.Namespace, url: str, pid: int, load: Load, max_rps: float, work: Path
) -> dict[str, Any]:
    """p50/p99 against offered load: fractions of the closed-loop maximum measured just before."""
    runs = []
    for fraction in args.open_loop:
        before = metric_samples(url)
        cpu = cpu_seconds(pid)
        result = run_open_loop(url, load, fraction * max_rps, args.seconds, args.warmup, work)
        spent = cpu_seconds(pid) - cpu
        time.sleep(0.2)
        checks = summarize_metrics(before, metric_samples(url))
        runs.append(
            {
                "fraction": fraction,
                **result.to_dict(),
                "service_cpu_share": round(spent / (args.seconds + args.warmup), 3),
                "service_metrics": checks,
            }
        )
        print(
            f"    open loop {fraction:4.0%} of {max_rps:,.0f}: offered {result.offered_rps:8.0f} req/s, "
            f"achieved {result.achieved_rps:8.0f}, p50 {result.p50_ms:7.2f} ms p99 {result.p99_ms:8.2f} ms, "
            f"errors {result.errors}, generator lag p99 {result.send_lag_p99_ms:.2f} ms",
            flush=True,
        )
    return {
        "max_rps": max_rps,
        "max_from": f"closed loop, c={args.connections}",
        "runs": runs,
        "knee": knee(runs),
    }


def wait_quiet(minutes: float) -> float:
    """Wait (up to `minutes`) for the 1-minute load average to fall below QUIET_LOAD; returns it."""
    deadline = time.monotonic() + minutes * 60
    load = os.getloadavg()[0]
    while load >= QUIET_LOAD and time.monotonic() < deadline:
        print(f"  waiting for a quiet machine: 1-minute load {load:.2f} (want < {QUIET_LOAD})", flush=True)
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    mem = next(
        ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "onnxruntime", "numpy"):
        out[pkg] = metadata.version(pkg)
    for pkg in ("redis", "hiredis", "orjson", "prometheus-client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    out["redis-server"] = next((w.split("=")[1] for w in redis_v if w.startswith("v=")), "?")
    wrk_v = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True).stdout.split()
    out["wrk"] = wrk_v[1] if len(wrk_v) > 1 else "?"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "service", "benchmarks/serving"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    out["git"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return out


def write_experiments(work: Path, bundles: dict[str, Path]) -> Path:
    return write_experiment(work / "experiments.toml", bundles, salt="bench")


def served_precisions(url: str) -> dict[str, str]:
    """The ranker precision each variant serves, from /models."""
    with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
        models = json.loads(r.read())["models"]
    return {m["variant"]: m.get("ranker_precision", "fp32") for m in models}


def run_scenarios(
    args: argparse.Namespace,
    work: Path,
    bundles: dict[str, Path],
    redis_url: str,
    people: list[dict[str, object]] | None,
    setting: tuple[str, str, dict[str, str]] | None = None,
    names: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """Each scenario (or those in `names`) on the service and on the floor; with a `setting`
    (suffix, what it is, the service's MAILREC_* settings), the service runs with those settings and
    the rows are named `<scenario>+<suffix>`."""
    experiments = write_experiments(work, bundles)
    extra = setting[2] if setting is not None else {}
    service = start_service(work, experiments, redis_url, SERVICE_CPU, 1, **extra)
    url = service.url
    results = []
    try:
        served = served_precisions(url)
        for sc in scenarios.build(bundles["mail"], people=people):
            if args.scenarios and sc.name not in args.scenarios:
                continue
            if names is not None and sc.name not in names:
                continue
            if setting is not None:
                suffix, what, _ = setting
                sc = replace(sc, name=f"{sc.name}+{suffix}", description=f"{sc.description}; {what}")
            print(f"- {sc.name}: {sc.description}", flush=True)
            response = work / f"floor-{sc.name}.json"
            size = capture(url, scenarios.sample_body(sc, bundles["mail"]), sc.load.headers, response)
            floor, floor_url = start_floor(work, response, SERVICE_CPU)
            row: dict[str, Any] = {
                "name": sc.name,
                "description": sc.description,
                "response_bytes": size,
                "ranker_precision": served[sc.load.headers["X-Variant"]],
            }
            try:
                for c in sorted({args.connections, 1}, reverse=True):
                    before = metric_samples(url)
                    svc, svc_cpu = measure(url, service.pid, sc.load, c, args.seconds, args.warmup, work)
                    checks = summarize_metrics(before, metric_samples(url))
                    ref, ref_cpu = measure(floor_url, floor.pid, sc.load, c, args.seconds, args.warmup, work)
                    row[f"c{c}"] = {
                        "service": svc.to_dict(),
                        "floor": ref.to_dict(),
                        "rps_ratio": round(svc.rps / ref.rps, 3),
                        "service_cpu_us_per_request": round(svc_cpu, 1),
                        "floor_cpu_us_per_request": round(ref_cpu, 1),
                        "cpu_ratio": round(ref_cpu / svc_cpu, 3),
                        "p50_ratio": round(svc.p50_ms / ref.p50_ms, 2),
                        "p50_above_floor_ms": round(svc.p50_ms - ref.p50_ms, 3),
                        "service_metrics": checks,
                    }
                    print(f"    c={c:<3} service {_brief(svc)} | floor {_brief(ref)}", end="", flush=True)
                    print(f" | ratio {svc.rps / ref.rps:.2f}", end="")
                    print(f" | CPU/request {svc_cpu:.0f} vs {ref_cpu:.0f} us  {checks}", flush=True)
                if args.open_loop and sc.name in args.open_loop_scenarios and sc.load.body is not None:
                    max_rps = row[f"c{args.connections}"]["service"]["rps"]
                    row["open_loop"] = open_loop_sweep(args, url, service.pid, sc.load, max_rps, work)
                if args.profile:
                    row["profile"] = profile.record(
                        service.pid, url, sc.load, args.connections, args.profile, work, LOAD_CPU
                    )
                    print(profile.summary_text(row["profile"]), flush=True)
            finally:
                floor.stop()
            results.append(row)
    finally:
        service.stop()
    return results


def run_scaling(
    args: argparse.Namespace, work: Path, bundles: dict[str, Path], redis_url: str
) -> dict[str, Any]:
    """cold_cached_100 at `connections`: 1 worker on core 0 vs 2 workers on both cores."""
    experiments = write_experiments(work, bundles)
    sc = scenarios.build(bundles["mail"])[0]
    out: dict[str, Any] = {"scenario": sc.name, "connections": args.connections, "runs": []}
    for workers, cpus in ((1, SERVICE_CPU), (2, "0,1")):
        service = start_service(work, experiments, redis_url, cpus, workers=workers)
        url = service.url
        try:
            before = metric_samples(url)
            warm = (
                run_wrk(url, sc.load, args.connections, args.warmup, work, LOAD_CPU) if args.warmup else None
            )
            result = run_wrk(url, sc.load, args.connections, args.seconds, work, LOAD_CPU)
            time.sleep(0.5)  # let the last in-flight requests finish
            checks = summarize_metrics(before, metric_samples(url))
        finally:
            service.stop()
        sent = result.requests + (warm.requests if warm else 0)
        counted = checks.get("recommend_200", 0)
        out["runs"].append(
            {
                "workers": workers,
                "service_cpus": cpus,
                "load_cpu": LOAD_CPU,
                "wrk": result.to_dict(),
                "wrk_completed_incl_warmup": sent,
                "metrics_recommend_200": counted,
                "metrics_impressions": checks.get("impressions", 0),
                # each wrk run (warm-up, measure) stops with up to `connections` requests in flight:
                # served and counted by the service, not reported by wrk
                "metrics_consistent": sent <= counted <= sent + 2 * args.connections
                and checks.get("impressions", 0) == 10 * counted,
            }
        )
        print(f"    workers={workers} cpus={cpus}: {_brief(result)};", end="")
        print(f" metrics /recommend 200 = {counted} for {sent} completed by wrk", flush=True)
    one, two = out["runs"]
    out["speedup"] = round(two["wrk"]["rps"] / one["wrk"]["rps"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MAILREC_DATA_DIR"))
    parser.add_argument(
        "--bundles", type=Path, default=None, help="a folder with control/ and mail/ to use as is"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scenarios", nargs="*", default=None)
    parser.add_argument(
        "--open-loop",
        type=lambda text: [float(x) for x in text.split(",") if x.strip()],
        default=[0.25, 0.5, 0.75, 0.9, 1.0],
        help="open-loop runs at these fractions of the scenario's closed-loop req/s ('' for none)",
    )
    parser.add_argument(
        "--open-loop-scenarios",
        type=lambda text: [x for x in text.split(",") if x],
        default=["cold_cached_100", "cold_catalog"],
        help="the scenarios that get an open-loop sweep (fixed-body scenarios only)",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 workers run")
    parser.add_argument("--profile", type=float, default=0, help="py-spy seconds per scenario (0: none)")
    parser.add_argument("--wait-quiet", type=float, default=0, help="minutes to wait for load < 0.5")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving")
    parser.add_argument(
        "--int8",
        action="store_true",
        help=f"also run {', '.join(INT8_SCENARIOS)} serving the int8 ranker (memo off), same run",
    )
    parser.add_argument(
        "--no-memo",
        action="store_true",
        help=f"also run {', '.join(NO_MEMO_SCENARIOS)} on a service with the cold-score memo off "
        "(MAILREC_COLD_SCORES_MB=0), same run",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help=f"also run {', '.join(SEARCH_SCENARIOS)} with a cold user's candidates from the search, not "
        "the ranker's prior (MAILREC_RETRIEVE_PRIOR=0, MAILREC_RETRIEVE_PRIOR_CLICKED=0), the cold-score "
        "memo off, same run",
    )
    parser.add_argument(
        "--full-ranker",
        action="store_true",
        help=f"also run {', '.join(FULL_RANKER_SCENARIOS)} with a user without behavior scored by "
        "ranker.onnx, not ranker_no_history.onnx (MAILREC_NO_HISTORY_GRAPH=0), the cold-score memo off, "
        "same run",
    )
    args = parser.parse_args(argv)
    # the service inherits this environment: its MAILREC_* settings are part of the command
    settings = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("MAILREC_")]
    command = " ".join([*settings, command_line("benchmarks.serving", argv)])
    if args.bundles is not None:
        bundles = {m: (args.bundles / m).resolve() for m in ("control", "mail")}
    else:
        if args.data_dir is None:
            parser.error("set MAILREC_DATA_DIR or --data-dir (the folder holding ml-100k/)")
        bundles = bench_bundles(Path(args.data_dir))
    # the people scenarios need MovieLens' user table: with --bundles alone they are left out
    people = scenarios.ml100k_people(Path(args.data_dir)) if args.data_dir is not None else None
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    info = {"machine": machine(), "versions": versions()}
    print(
        f"serving benchmark: {info['machine']['cpu']}, load {info['machine']['loadavg_at_start']}", flush=True
    )
    work = Path(tempfile.mkdtemp(prefix="mailrec-bench-"))
    redis_server: RedisServer | None = None
    try:
        redis_server = RedisServer(work, LOAD_CPU).start()
        rows = run_scenarios(args, work, bundles, redis_server.url, people)
        if args.int8:
            # the memo off too: a memo hit calls no ranker, so int8 would change nothing there
            env = {"MAILREC_RANKER_PRECISION": "int8", "MAILREC_COLD_SCORES_MB": "0"}
            int8 = ("int8", "int8 ranker, cold-score memo off", env)
            rows += run_scenarios(args, work, bundles, redis_server.url, people, int8, INT8_SCENARIOS)
        if args.no_memo:
            off = ("no-memo", "cold-score memo off", {"MAILREC_COLD_SCORES_MB": "0"})
            rows += run_scenarios(args, work, bundles, redis_server.url, people, off, NO_MEMO_SCENARIOS)
        if args.full_ranker:
            env = {"MAILREC_NO_HISTORY_GRAPH": "0", "MAILREC_COLD_SCORES_MB": "0"}
            full = ("full-ranker", "no-history users through ranker.onnx; cold-score memo off", env)
            rows += run_scenarios(args, work, bundles, redis_server.url, people, full, FULL_RANKER_SCENARIOS)
        if args.search:
            env = {
                "MAILREC_RETRIEVE_PRIOR": "0",
                "MAILREC_RETRIEVE_PRIOR_CLICKED": "0",
                "MAILREC_COLD_SCORES_MB": "0",
            }
            search = ("search", "candidates from the search, not the prior; cold-score memo off", env)
            rows += run_scenarios(args, work, bundles, redis_server.url, people, search, SEARCH_SCENARIOS)
        scaling = None if args.no_scaling else run_scaling(args, work, bundles, redis_server.url)
    finally:
        if redis_server is not None:
            redis_server.stop()
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "setup": {
            "service": f"python -m service, 1 uvicorn worker, taskset -c {SERVICE_CPU}, MAILREC_DEVICE=cpu",
            "floor": f"benchmarks.serving.floor under uvicorn, same settings, taskset -c {SERVICE_CPU}",
            "load": f"wrk -t1, taskset -c {LOAD_CPU}; redis-server on core {LOAD_CPU}",
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "connections": args.connections,
            "bundles": {m: str(p) for m, p in bundles.items()},
        },
        "scenarios": rows,
        "scaling": scaling,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0
