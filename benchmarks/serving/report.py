"""The markdown table of a serving-benchmark result."""

from __future__ import annotations

from typing import Any


def cpu(run: dict[str, Any], who: str) -> str:
    value = run.get(f"{who}_cpu_us_per_request")
    return f"{value:,.0f}" if value is not None else "n/a"


def markdown(r: dict[str, Any]) -> str:
    m, v, s = r["machine"], r["versions"], r["setup"]
    c = s["connections"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{r['command']}` ({r['date']}, git {v['git']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "git") + ".",
        "",
        f"Setup: {s['service']}; floor: {s['floor']}; load: {s['load']}. "
        f"{s['seconds']:g} s measured after {s['warmup_seconds']:g} s of warm-up per run.",
        "",
        f"| scenario | service req/s (c={c}) | floor req/s | ratio | service p50 / p99 ms (c={c}) "
        f"| floor p50 / p99 ms | service p50 ms (c=1) | floor p50 ms (c=1) "
        f"| CPU us/request, service / floor (c={c}) | CPU ratio | response bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["scenarios"]:
        hi, lo = row.get(f"c{c}"), row.get("c1")
        if hi is None or lo is None:
            continue
        sv, fl = hi["service"], hi["floor"]
        lines.append(
            f"| {row['name']} | {sv['rps']:,.0f} | {fl['rps']:,.0f} | **{hi['rps_ratio']:.2f}** "
            f"| {sv['p50_ms']:.2f} / {sv['p99_ms']:.2f} | {fl['p50_ms']:.2f} / {fl['p99_ms']:.2f} "
            f"| {lo['service']['p50_ms']:.2f} | {lo['floor']['p50_ms']:.2f} "
            f"| {cpu(hi, 'service')} / {cpu(hi, 'floor')} | {hi.get('cpu_ratio', float('nan')):.2f} "
            f"| {row['response_bytes']:,} |"
        )
    lines += [
        "",
        "ratio: service req/s over floor req/s, both at the same concurrency in the same run. CPU "
        "ratio: floor CPU over service CPU per request (the server process's user + system time over "
        "the measured run, from /proc): the same comparison with the host's noise mostly taken out.",
    ]
    lines += ["", "Scenarios:"]
    lines += [f"- `{row['name']}`: {row['description']}." for row in r["scenarios"]]
    checks = []
    for row in r["scenarios"]:
        for key in (f"c{c}", "c1"):
            if key in row:
                checks.append(f"{row['name']} c={key[1:]}: {row[key]['service_metrics']}")
    lines += ["", "Service metrics over each measured run (cache results, /recommend statuses):", ""]
    lines += [f"- {x}" for x in checks]
    sc = r.get("scaling")
    if sc:
        lines += ["", f"Workers ({sc['scenario']}, c={sc['connections']}):", ""]
        lines += [
            "| workers | service cores | req/s | p50 ms | p99 ms | wrk completed "
            "| /recommend 200 in /metrics | consistent |"
        ]
        lines += ["|---:|---|---:|---:|---:|---:|---:|---|"]
        for run in sc["runs"]:
            w = run["wrk"]
            lines.append(
                f"| {run['workers']} | {run['service_cpus']} | {w['rps']:,.0f} | {w['p50_ms']:.2f} "
                f"| {w['p99_ms']:.2f} | {run['wrk_completed_incl_warmup']:,} "
                f"| {run['metrics_recommend_200']:,} | {run['metrics_consistent']} |"
            )
        lines += ["", f"Speed-up with 2 workers: {sc['speedup']:.2f}x (wrk and redis-server share core 1)."]
    return "\n".join(lines) + "\n"
