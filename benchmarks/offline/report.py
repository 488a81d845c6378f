"""Aggregate benchmark rows: mean and std over seeds, lift over control, share of the oracle gap."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

GROUPS = ("new", "old")
METRICS = ("auc", "gauc")
RANKING = ("ndcg@10", "precision@10", "hr@10", "recall@50")  # whole catalog (rows with "ranking")
VS_POPULARITY = ("ndcg@10", "precision@10")


def value(row: dict[str, Any], group: str, metric: str) -> float:
    """A test metric of a row: whole-catalog ranking metrics from its ranking, the rest from test."""
    if metric in RANKING:
        return float(row["ranking"]["test"][group][metric])
    return float(row["test"][group][metric])


def _setting(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell["dataset"], cell["protocol"], cell["ranker"], cell.get("onboarding_noise"))


def paired_p(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value across seeds (nan with fewer than 2 pairs)."""
    from scipy import stats

    if len(a) < 2:
        return float("nan")
    diff = np.asarray(a) - np.asarray(b)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def _has(row: dict[str, Any], group: str, metric: str) -> bool:
    where: dict[str, Any] = (
        (row.get("ranking") or {}).get("test") or {} if metric in RANKING else row.get("test") or {}
    )
    return group in where and where[group].get(metric) is not None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (setting, method): per-metric mean/std, lift and gap closed vs control."""
    by: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by[_setting(r["cell"])][r["cell"]["method"]][r["cell"]["seed"]] = r
    out = []
    for setting, methods in sorted(by.items(), key=lambda kv: str(kv[0])):
        control = methods.get("control", {})
        oracle = methods.get("oracle", {})
        popular = methods.get("popularity", {})
        ranked = all(s.get("ranking") for seeds in methods.values() for s in seeds.values())
        for method, seeds in sorted(methods.items()):
            rec: dict[str, Any] = {
                "dataset": setting[0],
                "protocol": setting[1],
                "ranker": setting[2],
                "onboarding_noise": setting[3],
                "method": method,
                "seeds": sorted(seeds),
                "train_seconds": float(np.mean([s["train_seconds"] for s in seeds.values()])),
            }
            r2 = [s["diagnostics"]["virtual_r2_new"] for s in seeds.values() if s.get("diagnostics")]
            rec["virtual_r2_new"] = (float(np.mean(r2)), float(np.std(r2))) if r2 else None
            probe = [
                s["diagnostics"]["probe_r2_new"]
                for s in seeds.values()
                if (s.get("diagnostics") or {}).get("probe_r2_new") is not None
            ]
            rec["probe_r2_new"] = (float(np.mean(probe)), float(np.std(probe))) if probe else None
            for g in GROUPS:
                for m in METRICS + (RANKING if ranked else ()):
                    if any(not _has(seeds[s], g, m) for s in seeds):
                        continue
                    vals = [value(seeds[s], g, m) for s in sorted(seeds)]
                    rec[f"{g}_{m}"] = (float(np.mean(vals)), float(np.std(vals)))
                    common = [s for s in sorted(seeds) if s in control]
                    if common and method != "control":
                        mine = [value(seeds[s], g, m) for s in common]
                        base = [value(control[s], g, m) for s in common]
                        lifts = [(a - b) / b * 100 for a, b in zip(mine, base, strict=True)]
                        rec[f"{g}_{m}_lift_pct"] = (float(np.mean(lifts)), float(np.std(lifts)))
                        rec[f"{g}_{m}_p"] = paired_p(mine, base)
                    versus = [s for s in sorted(seeds) if s in popular]
                    if ranked and m in VS_POPULARITY and versus and method != "popularity":
                        mine = [value(seeds[s], g, m) for s in versus]
                        base = [value(popular[s], g, m) for s in versus]
                        lifts = [(a - b) / b * 100 for a, b in zip(mine, base, strict=True)]
                        rec[f"{g}_{m}_vs_pop_pct"] = (float(np.mean(lifts)), float(np.std(lifts)))
                        rec[f"{g}_{m}_vs_pop_p"] = paired_p(mine, base)
                    both = [s for s in common if s in oracle]
                    if both and method not in ("control", "oracle"):
                        c = np.mean([value(control[s], g, m) for s in both])
                        o = np.mean([value(oracle[s], g, m) for s in both])
                        me = np.mean([value(seeds[s], g, m) for s in both])
                        rec[f"{g}_{m}_gap"] = float((me - c) / (o - c)) if abs(o - c) > 1e-9 else None
                        rec[f"{g}_{m}_headroom"] = float(o - c)
            out.append(rec)
    return out


def _fmt(pair: Any, digits: int = 4) -> str:
    if pair is None:
        return "–"
    mean, std = pair
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.0f}%"


def markdown(summary: list[dict[str, Any]], metric: str = "auc") -> str:
    lines = [
        f"| dataset | protocol | ranker | method | new {metric.upper()} | lift vs control | p | "
        f"gap closed | old {metric.upper()} | old lift |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lift = r.get(f"new_{metric}_lift_pct")
        old_lift = r.get(f"old_{metric}_lift_pct")
        p = r.get(f"new_{metric}_p")
        lines.append(
            f"| {r['dataset']} | {r['protocol']} | {r['ranker']} | {r['method']} "
            f"| {_fmt(r[f'new_{metric}'])} "
            f"| {'–' if lift is None else f'{lift[0]:+.2f}% ± {lift[1]:.2f}'} "
            f"| {'–' if p is None or math.isnan(p) else f'{p:.2f}'} "
            f"| {_pct(r.get(f'new_{metric}_gap'))} | {_fmt(r[f'old_{metric}'])} "
            f"| {'–' if old_lift is None else f'{old_lift[0]:+.2f}%'} |"
        )
    return "\n".join(lines)
