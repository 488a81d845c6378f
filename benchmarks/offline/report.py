"""Aggregate benchmark rows: mean and std over seeds, lift over control, share of the oracle gap."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

GROUPS = ("new", "old")
METRICS = ("auc", "gauc")


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


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (setting, method): per-metric mean/std, lift and gap closed vs control."""
    by: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by[_setting(r["cell"])][r["cell"]["method"]][r["cell"]["seed"]] = r
    out = []
    for setting, methods in sorted(by.items(), key=lambda kv: str(kv[0])):
        control = methods.get("control", {})
        oracle = methods.get("oracle", {})
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
            for g in GROUPS:
                for m in METRICS:
                    vals = [seeds[s]["test"][g][m] for s in sorted(seeds)]
                    rec[f"{g}_{m}"] = (float(np.mean(vals)), float(np.std(vals)))
                    common = [s for s in sorted(seeds) if s in control]
                    if common and method != "control":
                        mine = [seeds[s]["test"][g][m] for s in common]
                        base = [control[s]["test"][g][m] for s in common]
                        lifts = [(a - b) / b * 100 for a, b in zip(mine, base, strict=True)]
                        rec[f"{g}_{m}_lift_pct"] = (float(np.mean(lifts)), float(np.std(lifts)))
                        rec[f"{g}_{m}_p"] = paired_p(mine, base)
                    both = [s for s in common if s in oracle]
                    if both and method not in ("control", "oracle"):
                        c = np.mean([control[s]["test"][g][m] for s in both])
                        o = np.mean([oracle[s]["test"][g][m] for s in both])
                        me = np.mean([seeds[s]["test"][g][m] for s in both])
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
