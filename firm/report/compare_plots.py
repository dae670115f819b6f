"""The sweep comparison's figures: every algorithm of a sweep on the same axes (COMPARISON_PLOTS).

    front            final eval rewards of every usable point, per pair of objectives; filled: non-dominated
    hv_rounds        hypervolume of each algorithm's points per round
    rewards          eval reward per round at each algorithm's preference closest to uniform
    drift            client disagreement per round at that point
    reward_vs_bytes  eval reward against the bytes uploaded so far at that point

No hypervolume is computed in this module. The final points' are sweep.json's "pareto", written by
firm.pareto.pareto_summary, which `_sweep_pareto` also calls while a sweep in progress has not
written it yet; the per-round ones are firm.pareto.hypervolume_by_round of the points' evals.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from firm.pareto import Normalization, common_base, hypervolume_by_round, non_dominated, pareto_summary
from firm.report.load import Run, Sweep, _get, _num, _vector
from firm.report.plotting import (
    HEIGHT,
    WIDTH,
    _byte_unit,
    _figure,
    _legend,
    _no_data,
    _plot_series,
    _round_axis,
    _top,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABEL_OFFSETS = ((6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"))


# ---------------------------------------------------------------------------------------------
# Hypervolumes: sweep.json's for the final points, firm.pareto's per round


def _sweep_base(sweep: Sweep) -> list[float] | None:
    """The base model's held-out rewards shared by every usable point (firm.pareto.common_base), or None."""
    usable = [p for a in sweep.algorithms for p in sweep.usable(a)]
    return common_base([p.run.summary.get("initial_eval") if p.run else None for p in usable], sweep.objectives)


def _sweep_pareto(sweep: Sweep) -> tuple[dict[str, Any] | None, str]:
    """sweep.json's hypervolumes with their normalisation, or (sweep in progress) the same computed here by the
    function that writes them into sweep.json, over the usable points."""
    pareto = sweep.data.get("pareto")
    if isinstance(pareto, dict) and isinstance(pareto.get("hypervolume"), dict):
        return pareto, "sweep.json"
    base = _sweep_base(sweep)
    computed = pareto_summary({a: [p.final for p in sweep.usable(a)] for a in sweep.algorithms}, base)
    if computed is None:
        return None, "no completed points"
    return computed, "computed here from the completed points: sweep.json has none yet"


def _evals_by_round(run: Run, names: list[str]) -> dict[int, tuple[float, ...]]:
    """round -> eval rewards [M]; round 0 is the initial eval (summary.json); rounds without eval are left out."""
    out = {}
    if (initial := _vector(run.summary.get("initial_eval"), names)) is not None:
        out[0] = initial
    for row in run.metrics:
        if (evals := _vector(row.get("eval"), names)) is not None:
            out[int(row["round"])] = evals
    return out


def _hv_by_round(sweep: Sweep) -> tuple[dict[str, dict[int, float]], Normalization | None]:
    """algorithm -> round -> hypervolume of its usable points' evals at that round, and the normalisation
    (firm.pareto.hypervolume_by_round: ONE min-max normalisation over every point's eval at every round,
    all algorithms; a round counts for an algorithm only if every one of its points was evaluated then)."""
    base = _sweep_base(sweep)
    return hypervolume_by_round(
        {a: [_evals_by_round(p.run, sweep.objectives) for p in sweep.usable(a) if p.run] for a in sweep.algorithms}, base
    )


# ---------------------------------------------------------------------------------------------
# Plots: each function takes a Sweep and returns a Figure; `write_comparison` saves them.


def _style(i: int) -> dict[str, Any]:
    """Colour and marker of the i-th algorithm; markers shrink with i so coincident points stay visible, nested."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ms": max(9.0 - 1.4 * i, 4.0)}


def _pref_text(preference: Sequence[float]) -> str:
    return "/".join(f"{w:g}" for w in preference)


def _panels(n: int, width: float = 3.6, height: float = 3.0, extra: float = 1.0) -> tuple[Figure, list[Axes]]:
    """n panels, at most 3 a row; the unused ones are hidden."""
    ncols = min(max(n, 1), 3)
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = _figure(ncols, nrows, width=width * ncols + 0.4, height=height * nrows + extra)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _fig_legend(fig: Figure, axes: list[Axes], **kwargs: Any) -> None:
    """One legend for all panels: every label once, in the order first drawn."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize="small", **kwargs)


def _footnote(fig: Figure, text: str) -> None:
    fig.supxlabel(textwrap.fill(text, width=int(fig.get_figwidth() * 15)), fontsize="small", color="0.25")


def _normalization_text(pareto: dict[str, Any] | None, names: list[str]) -> str:
    if not pareto:
        return "no hypervolume: no completed points"
    if "scales" in pareto:  # fixed reference: the base model
        ref = "; ".join(
            f"{n} {r:.4g} (scale {s:g})" for n, r, s in zip(names, pareto["reference"], pareto["scales"], strict=False)
        )
        return f"Hypervolume of the improvement over the base model's held-out rewards, the reference: {ref}; the same for an algorithm alone or beside others."
    norm = pareto["normalization"]
    bounds = "; ".join(f"{n} [{lo:.4g}, {hi:.4g}]" for n, lo, hi in zip(names, norm["lower"], norm["upper"], strict=False))
    method = str(norm.get("method", "")).split(",")[0]
    reference = ", ".join(f"{r:g}" for r in pareto["reference"])
    return f"Hypervolume normalisation ({method} over the final points of all algorithms): {bounds}; reference ({reference}) in normalised units."


def _clusters(xs: list[float], ys: list[float], span_x: float, span_y: float) -> list[list[int]]:
    """Groups of points within 4% of the axis spans of each other: one label per group, so labels do not overprint."""
    groups: list[list[int]] = []
    for i in range(len(xs)):
        for group in groups:
            j = group[0]
            if abs(xs[i] - xs[j]) <= 0.04 * span_x and abs(ys[i] - ys[j]) <= 0.04 * span_y:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _plot_front(sweep: Sweep) -> Figure:
    """Final eval rewards of every usable point; filled markers are the algorithm's non-dominated points."""
    names = sweep.objectives
    pairs = list(itertools.combinations(range(len(names)), 2))
    if len(pairs) <= 1:
        fig, axes = _figure(width=WIDTH + 1.8, height=HEIGHT + 1.2)
    else:
        fig, axes = _panels(len(pairs), extra=1.3)
    title = "Final held-out eval reward of every sweep point (label: preference)"
    if not pairs:
        axes[0].text(0.5, 0.5, "a front needs two or more objectives", transform=axes[0].transAxes, ha="center", color="0.4")
        axes[0].set_title(title)
        return fig
    pareto, _ = _sweep_pareto(sweep)
    finals = {a: [p.final for p in sweep.usable(a)] for a in sweep.algorithms}
    every = [v for vectors in finals.values() for v in vectors]
    for ax, (a, b) in zip(axes, pairs, strict=False):
        xs_all, ys_all = [v[a] for v in every], [v[b] for v in every]
        span_x = (max(xs_all) - min(xs_all)) if every else 0.0
        span_y = (max(ys_all) - min(ys_all)) if every else 0.0
        for i, algorithm in enumerate(sweep.algorithms):
            points, vectors = sweep.usable(algorithm), finals[algorithm]
            if not points:
                continue
            style = _style(i)
            front = non_dominated(vectors)  # over all M objectives, not just this pair
            xs, ys = [v[a] for v in vectors], [v[b] for v in vectors]
            if len(names) == 2 and len(points) > 1:  # the sweep order is the preference order
                ax.plot(xs, ys, color=style["color"], lw=1.0, alpha=0.5, zorder=1)
            keep = [k for k in range(len(xs)) if front[k]]
            drop = [k for k in range(len(xs)) if not front[k]]
            ax.plot([xs[k] for k in keep], [ys[k] for k in keep], ls="none", mec="k", mew=0.7, label=algorithm, **style)
            if drop:
                ax.plot(
                    [xs[k] for k in drop], [ys[k] for k in drop], ls="none", mfc="white", mew=1.3, mec=style["color"], **style
                )
            for group in _clusters(xs, ys, span_x or 1.0, span_y or 1.0):
                text = " · ".join(_pref_text(points[k].preference) for k in group)
                x, y = xs[group[0]], ys[group[0]]
                dx, dy, ha, va = LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
                if span_x and (x - min(xs_all)) / span_x < 0.2:  # near the left edge: label to the right
                    dx, ha = abs(dx), "left"
                elif span_x and (x - min(xs_all)) / span_x > 0.8:
                    dx, ha = -abs(dx), "right"
                ax.annotate(
                    text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5, color=style["color"], ha=ha, va=va
                )
        if pareto:
            if "scales" in pareto:  # the reference is the base model's rewards, in reward units
                ref = list(pareto["reference"])
            else:
                lower, upper, reference = (
                    pareto["normalization"]["lower"],
                    pareto["normalization"]["upper"],
                    pareto["reference"],
                )
                ref = [lo + r * (hi - lo) for lo, hi, r in zip(lower, upper, reference, strict=False)]
            ax.plot([ref[a]], [ref[b]], ls="none", marker="x", ms=8, mew=1.5, color="0.3", label="hypervolume reference point")
        ax.set_xlabel(f"{names[a]} (final eval reward)")
        ax.set_ylabel(f"{names[b]} (final eval reward)")
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    if not every:
        _no_data(axes[0], "completed point")
    fig.suptitle(title)
    legend_title = "filled: non-dominated\nhollow: dominated" + ("\nline: preference order" if len(names) == 2 else "")
    _fig_legend(fig, axes, loc="outside right center", title=legend_title, title_fontsize="small", alignment="left")
    _footnote(fig, _normalization_text(pareto, names))
    return fig


def _plot_hv_rounds(sweep: Sweep) -> Figure:
    hv, normalization = _hv_by_round(sweep)
    fig, (ax,) = _figure(width=WIDTH + 1.0, height=HEIGHT + 1.0)
    values: list[float] = []
    for i, algorithm in enumerate(sweep.algorithms):
        series = hv.get(algorithm)
        if series:
            ax.plot(list(series), list(series.values()), label=algorithm, **_style(i))
            values += series.values()
    if not values:
        _no_data(ax, "evaluation")
    if normalization is None:  # fixed reference: the base model
        ax.set_title("Hypervolume per round\n(improvement over the base model)", fontsize="medium")
        ax.set_ylabel("hypervolume of the sweep's points\n(reward units above the base model)")
        ax.set_ylim(0, _top(values))
    else:
        ax.set_title("Hypervolume per round\n(one normalisation over all algorithms and rounds)", fontsize="medium")
        ax.set_ylabel("hypervolume of the sweep's points\n(normalised, in [0, 1])")
        ax.set_ylim(0, min(_top(values), 1.1))
    _round_axis(ax, sorted({r for series in hv.values() for r in series}))
    _legend(ax, fontsize="small", title="algorithm")
    if normalization is not None:
        bounds = "; ".join(
            f"{n} [{lo:.4g}, {hi:.4g}]"
            for n, lo, hi in zip(sweep.objectives, normalization.lower, normalization.upper, strict=True)
        )
        _footnote(
            fig,
            f"Normalisation: min-max over every completed point's eval at every round (round 0 = base model), all algorithms: "
            f"{bounds}; reference 0 (worst corner). Not sweep.json's normalisation (final points only), so the last round "
            "need not equal the table's hypervolume.",
        )
    elif values:
        _footnote(
            fig,
            "Hypervolume of the improvement over the base model's held-out rewards (round 0), scale 1 per objective: "
            "each algorithm's of its own points, the same alone or beside the others.",
        )
    return fig


def _central_points(sweep: Sweep) -> tuple[dict[str, Run], dict[str, str], str]:
    """algorithm -> run at its preference closest to uniform, legend labels, and the preference for titles."""
    points = {a: p for a in sweep.algorithms if (p := sweep.central(a)) is not None and p.run is not None}
    preferences = {p.preference for p in points.values()}
    if len(preferences) <= 1:
        where = f"p = {_pref_text(next(iter(preferences)))}" if preferences else "no completed point"
        return {a: p.run for a, p in points.items() if p.run}, {a: a for a in points}, where
    labels = {a: f"{a} (p = {_pref_text(p.preference)})" for a, p in points.items()}
    return {a: p.run for a, p in points.items() if p.run}, labels, "per algorithm, p in the legend"


def _plot_central_rewards(sweep: Sweep) -> Figure:
    runs, labels, where = _central_points(sweep)
    names = sweep.objectives
    fig, axes = _panels(len(names))
    rounds = {0}
    for ax, name in zip(axes, names, strict=False):
        for i, algorithm in enumerate(sweep.algorithms):
            if algorithm not in runs:
                continue
            run = runs[algorithm]
            raw: list[tuple[float, Any]] = [(0, run.base_eval[name])] if name in run.base_eval else []
            raw += [(r["round"], r["eval"][name]) for r in run.metrics if isinstance(r.get("eval"), dict) and name in r["eval"]]
            style = _style(i)
            _plot_series(ax, raw, style.pop("color"), labels[algorithm], **style)
            rounds |= set(run.rounds)
        ax.set_title(name, fontsize="medium")
        ax.set_ylabel("mean eval reward")
        _round_axis(ax, sorted(rounds) if runs else [])
    if not runs:
        _no_data(axes[0], "completed point")
    fig.suptitle(f"Held-out eval reward per round at the preference closest to uniform\n({where}; round 0 = base model)")
    _fig_legend(fig, axes, loc="outside lower center", ncols=min(len(runs), 5) or 1)
    return fig


def _plot_central_drift(sweep: Sweep) -> Figure:
    runs, labels, where = _central_points(sweep)
    fig, axes = _figure(2, 1, width=WIDTH + 2.2, height=HEIGHT + 0.8)
    for ax, key, title, unit in (
        (axes[0], "weights", "Weight drift", "mean ‖λ̄ᵢ − mean λ̄‖₁  (unitless)"),
        (axes[1], "updates", "Update drift", "mean ‖Δᵢ − Δ̄‖² / ‖Δ̄‖²  (unitless)"),
    ):
        values: list[float] = []
        for i, algorithm in enumerate(sweep.algorithms):
            if algorithm not in runs:
                continue
            run, style = runs[algorithm], _style(i)
            ys = [_num(_get(r, "drift", key)) for r in run.metrics]
            if any(math.isfinite(y) for y in ys):
                ax.plot(run.rounds, ys, label=labels[algorithm], **style)
                values += ys
            else:
                ax.plot([], [], ls="none", label=f"{labels[algorithm]}: n/a", **style)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(unit)
        _round_axis(ax, sorted({r for run in runs.values() for r in run.rounds}))
        ax.set_ylim(-0.04 * _top(values), _top(values))  # markers of algorithms at 0 stay whole
        if not any(math.isfinite(v) for v in values):
            _no_data(ax, "drift")
    fig.suptitle(f"Client disagreement per round at the preference closest to uniform ({where})")
    _fig_legend(fig, axes, loc="outside lower center", ncols=min(len(runs), 5) or 1)
    return fig


def _plot_reward_vs_bytes(sweep: Sweep) -> Figure:
    runs, labels, where = _central_points(sweep)
    names = sweep.objectives
    cumulative: dict[str, dict[int, float]] = {}  # algorithm -> round -> bytes uploaded up to its end
    for algorithm, run in runs.items():
        total, cumulative[algorithm] = 0.0, {0: 0.0}
        for row in run.metrics:
            upload = _num(_get(row, "comm", "upload_bytes"))
            total += upload if math.isfinite(upload) else 0.0
            cumulative[algorithm][int(row["round"])] = total
    scale, unit = _byte_unit(max((b for c in cumulative.values() for b in c.values()), default=0.0))
    fig, axes = _panels(len(names), width=3.9)
    for ax, name in zip(axes, names, strict=False):
        for i, algorithm in enumerate(sweep.algorithms):
            if algorithm not in runs:
                continue
            run, sent = runs[algorithm], cumulative[algorithm]
            raw: list[tuple[float, Any]] = [(0.0, run.base_eval[name])] if name in run.base_eval else []
            raw += [
                (sent[r["round"]] / scale, r["eval"][name])
                for r in run.metrics
                if isinstance(r.get("eval"), dict) and name in r["eval"]
            ]
            style = _style(i)
            _plot_series(ax, raw, style.pop("color"), labels[algorithm], **style)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(f"cumulative upload ({unit})")
        ax.set_ylabel("mean eval reward")
        ax.set_xlim(left=-0.03 * (ax.get_xlim()[1] or 1.0))
        ax.grid(alpha=0.3)
    if not runs:
        _no_data(axes[0], "completed point")
    fig.suptitle(f"Eval reward vs cumulative bytes uploaded, one marker per evaluated round\n({where}; 0 bytes = base model)")
    _fig_legend(fig, axes, loc="outside lower center", ncols=min(len(runs), 5) or 1)
    return fig


COMPARISON_PLOTS = {
    "front": _plot_front,
    "hv_rounds": _plot_hv_rounds,
    "rewards": _plot_central_rewards,
    "drift": _plot_central_drift,
    "reward_vs_bytes": _plot_reward_vs_bytes,
}
