"""PNG figures of the offline benchmark (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Record = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(r: Record) -> str:
    noise = r["onboarding_noise"]
    extra = "" if noise is None else f", genres noise {noise:g}"
    return f"{r['dataset']} {r['protocol']} {r['ranker']}{extra}"


def auc_by_method(summary: Sequence[Record], order: Sequence[str], path: Path, metric: str = "auc") -> None:
    """New-user AUC, mean and std over seeds, one bar per method, one panel per setting."""
    plt = _pyplot()
    settings: dict[str, list[Record]] = {}
    for r in summary:
        settings.setdefault(_title(r), []).append(r)
    n = len(settings)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, recs) in zip(axes.flat, settings.items(), strict=False):
        recs = sorted(recs, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
        means = [r[f"new_{metric}"][0] for r in recs]
        stds = [r[f"new_{metric}"][1] for r in recs]
        colors = ["0.55" if r["method"] in ("control", "oracle") else "tab:blue" for r in recs]
        ax.bar(range(len(recs)), means, yerr=stds, color=colors, capsize=3)
        labels = [f"{r['method']} ({len(r['seeds'])})" for r in recs]  # seeds per method
        ax.set_xticks(range(len(recs)), labels, rotation=60, ha="right", fontsize=8)
        lo, hi = (
            min(m - s for m, s in zip(means, stds, strict=True)),
            max(m + s for m, s in zip(means, stds, strict=True)),
        )
        pad = max(hi - lo, 1e-3) * 0.3
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"new-user {metric.upper()}")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def losses(curves: dict[str, list[dict[str, float]]], path: Path, smooth: int = 10) -> None:
    """L_rt, L_a, L_v, L_d per training batch (moving average over `smooth` batches)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, name in zip(axes, ("L_rt", "L_a", "L_v", "L_d"), strict=True):
        for label, batches in curves.items():
            y = np.array([b.get(name, np.nan) for b in batches], dtype=float)
            if np.isnan(y).all():
                continue
            kernel = np.ones(min(smooth, len(y))) / min(smooth, len(y))
            ax.plot(np.convolve(np.nan_to_num(y), kernel, mode="valid"), label=label, lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("batch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(
    points: dict[str, list[tuple[float, Record]]],
    path: Path,
    xlabel: str,
    min_headroom: float,
    metric: str = "auc",
) -> None:
    """Lift over control (%) and share of the oracle gap closed, per method, against x.

    The gap closed is left out where the oracle's headroom is below `min_headroom` (noise).
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for method, pts in points.items():
        pts = sorted(pts, key=lambda p: p[0])
        xs = [x for x, _ in pts]
        lift = [r.get(f"new_{metric}_lift_pct") or (np.nan, np.nan) for _, r in pts]
        ax1.errorbar(xs, [m for m, _ in lift], yerr=[s for _, s in lift], marker="o", capsize=3, label=method)
        gap = [
            r.get(f"new_{metric}_gap") if abs(r.get(f"new_{metric}_headroom") or 0) >= min_headroom else None
            for _, r in pts
        ]
        ax2.plot(xs, [np.nan if g is None else 100 * g for g in gap], marker="o", label=method)
    ax1.axhline(0, color="0.4", lw=0.8)
    ax1.set_ylabel(f"new-user {metric.upper()} lift over control (%)")
    ax2.axhline(0, color="0.4", lw=0.8)
    ax2.axhline(100, color="0.4", lw=0.8, ls="--")
    ax2.set_ylabel("control -> oracle gap closed (%)")
    ax2.set_title(f"shown where oracle - control >= {min_headroom}", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve(points: dict[str, list[tuple[int, Record]]], path: Path, metric: str, ylabel: str) -> None:
    """Absolute new-user `metric` (mean and std over seeds) against revealed interactions n."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, pts in points.items():
        pts = sorted(pts, key=lambda p: p[0])
        vals = [r[f"new_{metric}"] for _, r in pts]
        ls = "--" if method.startswith("popularity") else "-"
        label = f"{method} ({len(pts[0][1]['seeds'])} seeds)"
        ax.errorbar([n for n, _ in pts], [m for m, _ in vals], yerr=[s for _, s in vals], marker="o", ls=ls,
                    capsize=3, label=label)  # fmt: skip
    ax.set_xlabel("interactions known per new user (n)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fewshot(points: dict[str, list[tuple[int, Record]]], path: Path, metric: str = "auc") -> None:
    """Paired lift over control at the same n (%), against the number of revealed interactions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, pts in points.items():
        pts = sorted(pts, key=lambda p: p[0])
        lift = [r.get(f"new_{metric}_lift_pct") or (np.nan, np.nan) for _, r in pts]
        ls = "--" if method == "oracle" else "-"
        label = f"{method} ({len(pts[0][1]['seeds'])} seeds)"
        ax.errorbar([n for n, _ in pts], [m for m, _ in lift], yerr=[s for _, s in lift], marker="o", ls=ls,
                    capsize=3, label=label)  # fmt: skip
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("interactions revealed per new user (n)")
    ax.set_ylabel(f"new-user {metric.upper()} lift over control (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
