"""Palette figures: targets vs predicted vs achieved per value, and the M = 2 feasible region.

`feasible_region` sweeps targets over a grid and solves the palette at each one (through the same
statistics oracle, so it works on federated samples): where the solve is feasible it records the KL
the tilt needs; the frontier (the largest reachable targets) is traced by tilting ever harder along
each direction of the quarter circle. It returns plain numbers (palette.json keeps them), and `plot_region` / `plot_palette`
draw from those numbers, so a report can redraw them from the run directory alone.

What the region reveals about the samples: its corners are each value's largest and smallest
sample reward (statistics at lambda = +-e_m), and its frontier is the upper-right edge of the
convex hull of the samples: the whole reward vectors of the samples on that edge (the tilted means
at large lambda), which palette.json stores.

Uses matplotlib's object-oriented API with the Agg canvas, like firm.report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from firm.palette.dual import MAX_LAMBDA, RewardOracle, solve_palette
from firm.palette.targets import Target

COLORS = {"target": "#444444", "reference": "#9aa5b1", "predicted": "#3b82f6", "achieved": "#16a34a", "best_of_n": "#f59e0b"}


def feasible_region(oracle: RewardOracle, names: Sequence[str], grid: int = 15, directions: int = 41) -> dict[str, Any]:
    """The palette solved over a grid of (x, y) targets, and the edge of the reachable targets (M = 2 only).

    The grid sweeps targets from a quarter of the reward range below the reference mean up to each
    value's largest sample; each cell records the KL the tilt needs, or null where the solve reports
    the targets infeasible. The frontier is the upper-right edge of the convex hull of the samples,
    i.e. the largest reachable targets: the tilted mean at lambda = MAX_LAMBDA/std * (cos t, sin t)
    for `directions` angles t in [0, pi/2] (one statistics round each; as lambda grows along a
    direction the tilt concentrates on the samples that direction ranks highest).

    Returns {"names", "x" [grid], "y" [grid], "kl" [grid][grid] (row = y), "frontier" [[x, y], ...],
    "reference_mean" [2]}.
    """
    if len(names) != 2:
        raise ValueError(f"the feasible region is drawn for two values, got {len(names)}")
    names = list(names)
    mean = oracle.stats(np.zeros(2)).mean
    ref = oracle.stats(np.zeros(2), mean)  # centred: an accurate std whatever the rewards' offset
    mean = mean + ref.mean
    std = np.sqrt(np.clip(np.diag(ref.cov), 0.0, None))
    scale = np.where(std > 0, std, 1.0)
    hi = np.array([oracle.stats(np.eye(2)[m]).shift for m in range(2)])  # largest sample of each value
    lo = np.array([-oracle.stats(-np.eye(2)[m]).shift for m in range(2)])  # smallest
    start = np.maximum(lo, mean - 0.25 * np.maximum(hi - lo, 1e-12))
    xs = np.linspace(start[0], hi[0], grid)
    ys = np.linspace(start[1], hi[1], grid)
    kl: list[list[float | None]] = []
    for y in ys:
        row: list[float | None] = []
        for x in xs:
            targets = [Target(names[0], "absolute", float(x)), Target(names[1], "absolute", float(y))]
            s = solve_palette(oracle, targets, names)
            row.append(s.kl if s.feasible else None)
        kl.append(row)
    frontier = []
    for t in np.linspace(0.0, 0.5 * np.pi, directions):
        lam = MAX_LAMBDA * np.array([np.cos(t), np.sin(t)]) / scale
        frontier.append([float(v) for v in oracle.stats(lam).mean])
    return {
        "names": names,
        "x": xs.tolist(),
        "y": ys.tolist(),
        "kl": kl,
        "frontier": frontier,
        "reference_mean": mean.tolist(),
    }


def _fig(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _point(values: Mapping[str, float | None] | None, names: Sequence[str]) -> tuple[float, float] | None:
    if not values:
        return None
    x, y = values.get(names[0]), values.get(names[1])
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return None
    return float(x), float(y)


def plot_region(region: Mapping[str, Any], palette: Mapping[str, Any], achieved: Mapping[str, float] | None = None) -> Figure:
    """The feasible region of (x, y) targets coloured by the KL the tilt needs, with the palette's points."""
    names = list(region["names"])
    fig = _fig(5.6, 4.4)
    ax = fig.add_subplot()
    kl = np.array([[np.nan if v is None else v for v in row] for row in region["kl"]], dtype=float)
    if np.isfinite(kl).any():
        mesh = ax.pcolormesh(region["x"], region["y"], kl, shading="nearest", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="KL(tilted || reference), nats")
    if region["frontier"]:
        fx, fy = zip(*region["frontier"], strict=True)
        ax.plot(fx, fy, color="black", lw=1.5, marker=".", ms=3, label="frontier: largest reachable targets")
    marks = [  # the target is drawn large and first, so a prediction on top of it leaves it visible
        ("target", _point(palette.get("targets"), names), "*", "#dc2626", 260),
        ("reference mean", region["reference_mean"], "o", COLORS["reference"], 90),
        ("predicted (tilted)", _point(palette.get("predicted"), names), "X", COLORS["predicted"], 70),
        ("achieved", _point(achieved, names), "^", COLORS["achieved"], 90),
    ]
    for label, xy, marker, color, size in marks:
        if xy is not None:
            ax.scatter([xy[0]], [xy[1]], marker=marker, s=size, color=color, edgecolor="black", zorder=5, label=label)
    ax.set_xlabel(f"{names[0]} target")
    ax.set_ylabel(f"{names[1]} target")
    verdict = "feasible" if palette.get("feasible") else "infeasible"
    ax.set_title(f"Which targets the reference's samples can reach ({verdict} palette)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_palette(
    palette: Mapping[str, Any],
    achieved: Mapping[str, float] | None = None,
    decoding: Mapping[str, Any] | None = None,
) -> Figure:
    """Grouped bars per value: reference mean, target, predicted (tilted), achieved (training), best-of-n."""
    names = list(palette["reference_mean"])
    series: list[tuple[str, Mapping[str, Any], str]] = [
        ("reference mean", palette["reference_mean"], COLORS["reference"]),
        ("target", palette["targets"], COLORS["target"]),
        ("predicted (tilted reference)", palette["predicted"], COLORS["predicted"]),
    ]
    if achieved:
        series.append(("achieved (trained, held-out)", achieved, COLORS["achieved"]))
    if decoding:
        series.append((f"best-of-{decoding['n']} (held-out)", decoding["best_of_n"], COLORS["best_of_n"]))
    fig = _fig(max(4.8, 1.9 * len(names) + 2.4), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        hs = [values.get(n) for n in names]
        heights = [float("nan") if h is None else float(h) for h in hs]
        ax.bar(xs, heights, width=width * 0.95, color=color, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("expected reward")
    verdict = "feasible" if palette.get("feasible") else "infeasible"
    lam = ", ".join(f"{n} {v:.3g}" for n, v in palette["lambda"].items() if v is not None)
    ax.set_title(f"Palette ({verdict}); λ: {lam}", fontsize=10)
    lows = [float(v) for s in series for v in s[1].values() if v is not None]
    if lows:
        lo, hi = min(lows), max(lows)
        pad = 0.15 * (hi - lo) if hi > lo else 0.05
        ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
