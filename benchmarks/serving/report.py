"""The markdown table of a serving-benchmark result."""

from __future__ import annotations

from typing import Any


def cpu(run: dict[str, Any], who: str) -> str:
    value = run.get(f"{who}_cpu_us_per_request")
    return f"{value:,.0f}" if value is not None else "n/a"


def memo_hits(run: dict[str, Any]) -> str:
    """The share of the run's cold requests the cold-score memo answered, or "off"."""
    m = run["service_metrics"]
    hit, miss = m.get("cold_hit", 0), m.get("cold_miss", 0)
    return f"{hit / (hit + miss):.0%}" if hit + miss else "off"


def open_loop(r: dict[str, Any]) -> list[str]:
    """The latency-against-offered-load table, for the scenarios that had an open-loop sweep."""
    rows = [row for row in r["scenarios"] if row.get("open_loop")]
    if not rows:
        return []
    lines = [
        "",
        "Latency against offered load (open loop: requests leave on a fixed schedule, latency counts "
        "from the scheduled time, so queueing is not hidden; `benchmarks.serving.openloop` on core 1; "
        "max = the scenario's closed-loop req/s above, same run):",
        "",
        "| scenario | offered | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms "
        "| errors | service CPU / scheduled time | generator lag p99 ms | connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for run in row["open_loop"]["runs"]:
            lines.append(
                f"| {row['name']} | {run['fraction']:.0%} | {run['offered_rps']:,.0f} "
                f"| {run['achieved_rps']:,.0f} "
                f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['p999_ms']:.2f} | {run['max_ms']:.1f} "
                f"| {run['errors']} | {run['service_cpu_share']:.0%} | {run['send_lag_p99_ms']:.2f} "
                f"| {run['connections']} |"
            )
    lines.append("")
    for row in rows:
        k = row["open_loop"]["knee"]
        if k is None:
            text = "no knee in the range measured (p99 stays within 5x its lowest-load value)"
        else:
            below = f"{k['below_fraction']:.0%}" if k["below_fraction"] is not None else "the lowest load"
            text = f"between {below} and {k['at_fraction']:.0%} of the closed-loop maximum"
        lines.append(
            f"- knee of `{row['name']}` (p99 above 5x its lowest-load value, or < 97% answered): {text}."
        )
    return lines


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
        f"| CPU us/request, service / floor (c={c}) | CPU ratio | cold memo hits (c={c}) | response bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            f"| {memo_hits(hi)} | {row['response_bytes']:,} |"
        )
    lines += [
        "",
        "ratio: service req/s over floor req/s, both at the same concurrency in the same run. CPU "
        "ratio: floor CPU over service CPU per request (the server process's user + system time over "
        "the measured run, from /proc): the same comparison with the host's noise mostly taken out. "
        "Cold memo hits: the share of the measured run's cold requests answered from the model's "
        "remembered whole-catalog scores (`service.coldscores`; off: the memo was off or not asked).",
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
    lines += open_loop(r)
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
