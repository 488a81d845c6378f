"""Markdown tables of the offline benchmark, from `report.summarize` records."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Record = dict[str, Any]


def _pm(pair: Any, digits: int = 4) -> str:
    return "–" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _lift(pair: Any) -> str:
    return "–" if pair is None else f"{pair[0]:+.2f}% ± {pair[1]:.2f}"


def _p(value: Any) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


MIN_HEADROOM = 0.002  # below this oracle - control gap (AUC or GAUC), "gap closed" is noise


def _gap(r: Record, key: str) -> str:
    """Share of the control -> oracle gap closed, when the oracle's headroom is worth a share."""
    value, headroom = r.get(f"{key}_gap"), r.get(f"{key}_headroom")
    if value is None or headroom is None or abs(headroom) < MIN_HEADROOM:
        return "–"
    return f"{100 * value:.0f}%"


def ordered(records: Sequence[Record], order: Sequence[str]) -> list[Record]:
    return sorted(records, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))


def method_table(records: Sequence[Record], order: Sequence[str]) -> str:
    """One line per method: new-user AUC and GAUC with lift, p and gap closed; old users; R^2."""
    lines = [
        "| method | seeds | new AUC | lift | p | gap closed | new GAUC | GAUC lift | GAUC gap "
        "| old AUC | old lift | R² virtual | train s |",
        "|" + "---|" * 13,
    ]
    for r in ordered(records, order):
        lines.append(
            f"| {r['method']} | {len(r['seeds'])} | {_pm(r['new_auc'])} | "
            f"{_lift(r.get('new_auc_lift_pct'))} | {_p(r.get('new_auc_p'))} | {_gap(r, 'new_auc')} | "
            f"{_pm(r['new_gauc'])} | "
            f"{_lift(r.get('new_gauc_lift_pct'))} | {_gap(r, 'new_gauc')} | {_pm(r['old_auc'])} | "
            f"{_lift(r.get('old_auc_lift_pct'))} | {_r2(r)} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def catalog_table(
    records: Sequence[Record], order: Sequence[str], x: Callable[[Record], str] | None = None, xname: str = ""
) -> str:
    """The catalog task: new users' whole-catalog NDCG@10 with its lift over control and over
    popularity (paired p), gap closed; precision@10, HR@10, Recall@50, AUC; old users' NDCG@10
    and its ratio to popularity's; R^2. With `x`, a first column (noise level, revealed count)."""
    head = f"| {xname} " if x else ""
    lines = [
        head + "| method | seeds | new NDCG@10 | vs control (p) | vs popularity (p) | gap closed "
        "| new P@10 | vs popularity (p) | new HR@10 | new R@50 | new AUC | old NDCG@10 | old vs popularity "
        "| old vs control | R² virtual (probe) | train s |",
        "|" + "---|" * (16 + (1 if x else 0)),
    ]
    rows = ordered(records, order)
    if x:
        rows = sorted(rows, key=x)
    for r in rows:
        lines.append(
            (f"| {x(r)} " if x else "")
            + f"| {r['method']} | {len(r['seeds'])} | {_pm(r.get('new_ndcg@10'))} | "
            f"{_lift_p(r, 'new_ndcg@10_lift_pct', 'new_ndcg@10_p')} | "
            f"{_lift_p(r, 'new_ndcg@10_vs_pop_pct', 'new_ndcg@10_vs_pop_p')} | {_gap(r, 'new_ndcg@10')} | "
            f"{_pm(r.get('new_precision@10'))} | "
            f"{_lift_p(r, 'new_precision@10_vs_pop_pct', 'new_precision@10_vs_pop_p')} | "
            f"{_pm(r.get('new_hr@10'), 3)} | {_pm(r.get('new_recall@50'))} | {_pm(r.get('new_auc'))} | "
            f"{_pm(r.get('old_ndcg@10'))} | {_lift(r.get('old_ndcg@10_vs_pop_pct'))} | "
            f"{_lift(r.get('old_ndcg@10_lift_pct'))} | {_r2(r)} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _lift_p(r: Record, lift: str, p: str) -> str:
    pair = r.get(lift)
    return "–" if pair is None else f"{pair[0]:+.1f}% ({_p(r.get(p))})"


def _r2(r: Record) -> str:
    """R^2 of the virtual behavior, and in brackets a linear probe's from the same attributes."""
    r2, probe = r.get("virtual_r2_new"), r.get("probe_r2_new")
    if r2 is None:
        return "–"
    return f"{r2[0]:.3f}" + (f" ({probe[0]:.3f})" if probe is not None else "")


def tuning_table(tuning: Sequence[Record]) -> str:
    lines = ["| method | knob | tried: value -> validation new-user AUC | chosen |", "|---|---|---|---|"]
    for t in tuning:
        tried = ", ".join(f"{x['value']} -> {x['val_new_auc']:.4f}" for x in t["tried"])
        lines.append(f"| {t['method']} | {t['knob']} | {tried} | {t['chosen']} |")
    return "\n".join(lines)


def sweep_table(
    records: Sequence[Record], order: Sequence[str], x: Callable[[Record], str], xname: str
) -> str:
    """Lift and gap closed per x value (noise level, revealed count) and method."""
    lines = [
        f"| {xname} | method | seeds | new AUC | lift | p | gap closed | new GAUC | GAUC lift | GAUC gap "
        "| R² virtual |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(ordered(records, order), key=lambda r: x(r)):
        lines.append(
            f"| {x(r)} | {r['method']} | {len(r['seeds'])} | {_pm(r['new_auc'])} | "
            f"{_lift(r.get('new_auc_lift_pct'))} | {_p(r.get('new_auc_p'))} | {_gap(r, 'new_auc')} | "
            f"{_pm(r['new_gauc'])} | {_lift(r.get('new_gauc_lift_pct'))} | {_gap(r, 'new_gauc')} | "
            f"{_r2(r)} |"
        )
    return "\n".join(lines)
