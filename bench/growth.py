"""How cost grows with the work: power-law exponents (cost ∝ size^k) and their log-log plots.

Used by the scale benchmarks (`bench.bench_scale`, `bench.bench_context`): each fits `k` by least squares
on log cost against log size, and draws one log-log plot per component into `docs/bench/` (ours and the
peer on the same axes, the fitted exponents in the legend).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_save_figure


def fit_exponent(sizes: list[float], costs: list[float]) -> float | None:
    """The slope k of log(cost) against log(size); None with fewer than two distinct positive points.

    >>> round(fit_exponent([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    points = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs) if s > 0 and c > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def plot_growth(
    path: Path,
    title: str,
    x_label: str,
    panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]],
) -> Path | None:
    """One figure, one log-log panel per `(y label, {series name: (xs, ys)})`; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (y_label, series) in zip(axes[0], panels):
        for name, (xs, ys) in series.items():
            k = fit_exponent(xs, ys)
            label = name + ("" if k is None else f"  (k = {k:.2f})")
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=90)
    return path


def exponent_text(k: float | None) -> str:
    return "n/a" if k is None else f"{k:.2f}"


def series_of(rows: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows that have both keys, in row order."""
    pairs = [(r[x_key], r[y_key]) for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]
