"""The sweep comparison's figures: every arm of a sweep on the same axes, as means over its seeds (COMPARISON_PLOTS).

    front            each arm's mean final eval point per preference, with the 95 % interval over seeds as error
                     bars, per pair of objectives; filled: non-dominated; one point for an arm that ignores p
    hv_rounds        hypervolume of each arm's points per round, mean over seeds with its interval as a band
    rewards          eval reward per round at each arm's preference closest to uniform, mean and band
    drift            client disagreement per round at that point
    reward_vs_bytes  eval reward against the bytes uploaded so far at that point

No hypervolume is computed in this module. The final points' are sweep.json's "pareto", written by
firm.pareto.seeded_pareto, which firm.report.seeds.sweep_pareto also calls while a sweep in progress
has not written it yet; the per-round ones are firm.pareto.hypervolume_by_round of each seed's
points' evals. Means and intervals over seeds: firm.report.seeds (firm.intervals.mean_interval).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from firm.pareto import Normalization, hypervolume_by_round, non_dominated
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
from firm.report.seeds import Estimate, front_points, over_seeds, seed_bases, sweep_pareto

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABEL_OFFSETS = ((6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"))
BAND = "band: 95 % t interval over seeds"


# ---------------------------------------------------------------------------------------------
# Hypervolumes per round: firm.pareto's, seed by seed


def _evals_by_round(run: Run, names: list[str]) -> dict[int, tuple[float, ...]]:
    """round -> eval rewards [M]; round 0 is the initial eval (summary.json); rounds without eval are left out."""
    out = {}
    if (initial := _vector(run.summary.get("initial_eval"), names)) is not None:
        out[0] = initial
    for row in run.metrics:
        if (evals := _vector(row.get("eval"), names)) is not None:
            out[int(row["round"])] = evals
    return out


def _hv_by_round_over_seeds(sweep: Sweep) -> tuple[dict[str, dict[int, Estimate]], Normalization | None]:
    """arm -> round -> hypervolume of its usable points' evals at that round, over seeds; and the normalisation.

    Per seed, firm.pareto.hypervolume_by_round of the arm's points at that seed: over that seed's base model
    (then no normalisation), or, without a shared base, ONE min-max normalisation over every point's eval at
    every round of that seed, all arms (the first seed's is returned); a round counts for an arm only if every
    one of its points was evaluated then."""
    per_arm: dict[str, list[dict[int, float]]] = {label: [] for label in sweep.arms}
    normalization: Normalization | None = None
    for seed, base in seed_bases(sweep).items():
        evals = {
            label: [_evals_by_round(p.run, sweep.objectives) for p in sweep.usable(label, seed) if p.run] for label in sweep.arms
        }
        hv, norm = hypervolume_by_round(evals, base)
        normalization = normalization or norm
        for label, series in hv.items():
            per_arm[label].append(series)
    return {label: over_seeds(series) for label, series in per_arm.items() if series}, normalization


def _hv_by_round(sweep: Sweep) -> tuple[dict[str, dict[int, float]], Normalization | None]:
    """arm -> round -> mean hypervolume over seeds (`_hv_by_round_over_seeds`), and the normalisation."""
    estimates, normalization = _hv_by_round_over_seeds(sweep)
    return {label: {r: e.mean for r, e in series.items()} for label, series in estimates.items()}, normalization


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
        return f"Hypervolume of the improvement over the base model's held-out rewards, the reference: {ref}; the same for an arm alone or beside others."
    if "normalization" not in pareto:  # a reference per seed (the tiny test model's base weights follow the seed)
        return "Hypervolume of the improvement over each seed's base model (its references differ by seed: sweep.json, pareto.by_seed); ×: their mean."
    norm = pareto["normalization"]
    bounds = "; ".join(f"{n} [{lo:.4g}, {hi:.4g}]" for n, lo, hi in zip(names, norm["lower"], norm["upper"], strict=False))
    method = str(norm.get("method", "")).split(",")[0]
    reference = ", ".join(f"{r:g}" for r in pareto["reference"])
    return f"Hypervolume normalisation ({method} over the final points of all arms): {bounds}; reference ({reference}) in normalised units."


def _reference_point(sweep: Sweep, pareto: dict[str, Any] | None) -> list[float] | None:
    """The hypervolume reference in reward units: the base model's rewards (their mean over seeds if they differ)."""
    if pareto and "scales" in pareto:
        return [float(r) for r in pareto["reference"]]
    if pareto and "normalization" in pareto:
        norm = pareto["normalization"]
        return [lo + r * (hi - lo) for lo, hi, r in zip(norm["lower"], norm["upper"], pareto["reference"], strict=False)]
    bases = [b for b in seed_bases(sweep).values() if b is not None]
    return [sum(b[m] for b in bases) / len(bases) for m in range(len(sweep.objectives))] if bases else None


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


def _front_label(preference: tuple[float, ...] | None) -> str:
    return "any p" if preference is None else _pref_text(preference)


def _plot_front(sweep: Sweep) -> Figure:
    """Each arm's mean final eval point per preference, error bars = 95 % t interval over seeds; filled: non-dominated."""
    names = sweep.objectives
    pairs = list(itertools.combinations(range(len(names)), 2))
    if len(pairs) <= 1:
        fig, axes = _figure(width=WIDTH + 1.8, height=HEIGHT + 1.2)
    else:
        fig, axes = _panels(len(pairs), extra=1.3)
    seeds = sum(1 for s in sweep.seeds if any(sweep.usable(a, s) for a in sweep.arms))
    title = f"Final held-out eval reward, mean over {seeds} seed{'s' if seeds != 1 else ''} (label: preference)"
    if not pairs:
        axes[0].text(0.5, 0.5, "a front needs two or more objectives", transform=axes[0].transAxes, ha="center", color="0.4")
        axes[0].set_title(title)
        return fig
    pareto, _ = sweep_pareto(sweep)
    fronts = {a: front_points(sweep, a) for a in sweep.arms}
    every = [tuple(e.mean for e in fp.rewards) for front in fronts.values() for fp in front]
    reference = _reference_point(sweep, pareto)
    for ax, (a, b) in zip(axes, pairs, strict=False):
        xs_all, ys_all = [v[a] for v in every], [v[b] for v in every]
        span_x = (max(xs_all) - min(xs_all)) if every else 0.0
        span_y = (max(ys_all) - min(ys_all)) if every else 0.0
        for i, label in enumerate(sweep.arms):
            front = fronts[label]
            if not front:
                continue
            style = _style(i)
            vectors = [tuple(e.mean for e in fp.rewards) for fp in front]
            keep = non_dominated(vectors)  # over all M objectives, not just this pair
            xs, ys = [v[a] for v in vectors], [v[b] for v in vectors]
            xerr = [0.0 if math.isnan(fp.rewards[a].half) else fp.rewards[a].half for fp in front]
            yerr = [0.0 if math.isnan(fp.rewards[b].half) else fp.rewards[b].half for fp in front]
            if len(names) == 2 and len(front) > 1:  # the grid order is the preference order
                ax.plot(xs, ys, color=style["color"], lw=1.0, alpha=0.5, zorder=1)
            if any(xerr) or any(yerr):
                ax.errorbar(
                    xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=style["color"], elinewidth=0.9, capsize=2.5, alpha=0.8
                )
            shown = f"{label} (one point: ignores p)" if front[0].preference is None else label
            on = [k for k in range(len(xs)) if keep[k]]
            off = [k for k in range(len(xs)) if not keep[k]]
            ax.plot([xs[k] for k in on], [ys[k] for k in on], ls="none", mec="k", mew=0.7, label=shown, **style)
            if off:
                ax.plot([xs[k] for k in off], [ys[k] for k in off], ls="none", mfc="white", mew=1.3, mec=style["color"], **style)
            for group in _clusters(xs, ys, span_x or 1.0, span_y or 1.0):
                text = " · ".join(_front_label(front[k].preference) for k in group)
                x, y = xs[group[0]], ys[group[0]]
                dx, dy, ha, va = LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
                if span_x and (x - min(xs_all)) / span_x < 0.2:  # near the left edge: label to the right
                    dx, ha = abs(dx), "left"
                elif span_x and (x - min(xs_all)) / span_x > 0.8:
                    dx, ha = -abs(dx), "right"
                ax.annotate(
                    text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5, color=style["color"], ha=ha, va=va
                )
        if reference is not None:
            ax.plot(
                [reference[a]], [reference[b]], ls="none", marker="x", ms=8, mew=1.5, color="0.3",
                label="base model (hypervolume reference)",
            )  # fmt: skip
        ax.set_xlabel(f"{names[a]} (final eval reward)")
        ax.set_ylabel(f"{names[b]} (final eval reward)")
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    if not every:
        _no_data(axes[0], "completed point")
    fig.suptitle(title)
    legend_title = "filled: non-dominated\nhollow: dominated" + ("\nline: preference order" if len(names) == 2 else "")
    if seeds > 1:
        legend_title += "\nbars: 95 % t interval\nover seeds"
    _fig_legend(fig, axes, loc="outside right center", title=legend_title, title_fontsize="small", alignment="left")
    _footnote(fig, _normalization_text(pareto, names))
    return fig


def _plot_hv_rounds(sweep: Sweep) -> Figure:
    hv, normalization = _hv_by_round_over_seeds(sweep)
    fig, (ax,) = _figure(width=WIDTH + 1.0, height=HEIGHT + 1.0)
    values: list[float] = []
    for i, label in enumerate(sweep.arms):
        series = hv.get(label)
        if series:
            style = _style(i)
            _plot_series(ax, [(r, e.band()) for r, e in series.items()], style.pop("color"), label, **style)
            values += [e.high if math.isfinite(e.high) else e.mean for e in series.values()]
    if not values:
        _no_data(ax, "evaluation")
    if normalization is None:  # fixed reference: the base model
        ax.set_title("Hypervolume per round\n(improvement over the base model)", fontsize="medium")
        ax.set_ylabel("hypervolume of the sweep's points\n(reward units above the base model)")
        ax.set_ylim(0, _top(values))
    else:
        ax.set_title("Hypervolume per round\n(one normalisation over all arms and rounds)", fontsize="medium")
        ax.set_ylabel("hypervolume of the sweep's points\n(normalised, in [0, 1])")
        ax.set_ylim(0, min(_top(values), 1.1))
    _round_axis(ax, sorted({r for series in hv.values() for r in series}))
    _legend(ax, fontsize="small", title="arm (mean over seeds)")
    if normalization is not None:
        bounds = "; ".join(
            f"{n} [{lo:.4g}, {hi:.4g}]"
            for n, lo, hi in zip(sweep.objectives, normalization.lower, normalization.upper, strict=True)
        )
        _footnote(
            fig,
            f"Normalisation: min-max over every completed point's eval at every round (round 0 = base model), all arms: "
            f"{bounds}; reference 0 (worst corner). Not sweep.json's normalisation (final points only), so the last round "
            f"need not equal the table's hypervolume. {BAND}.",
        )
    elif values:
        _footnote(
            fig,
            "Hypervolume of the improvement over the base model's held-out rewards (round 0), scale 1 per objective: "
            f"each arm's of its own points at each seed, the same alone or beside the others; the mean over seeds, {BAND}.",
        )
    return fig


def _central_points(sweep: Sweep) -> tuple[dict[str, list[Run]], dict[str, str], str]:
    """arm -> its runs (one per seed) at its preference closest to uniform, legend labels, and the preference for titles."""
    runs: dict[str, list[Run]] = {}
    preferences: dict[str, tuple[float, ...] | None] = {}
    for label in sweep.arms:
        points = [p for p in sweep.central_by_seed(label).values() if p.run is not None]
        if points:
            runs[label] = [p.run for p in points if p.run is not None]
            preferences[label] = points[0].preference if sweep.uses_preference(label) else None
    used = {p for p in preferences.values() if p is not None}
    if len(used) <= 1:
        where = f"p = {_pref_text(next(iter(used)))}" if used else "no completed point" if not runs else "any p"
        return runs, {a: a if preferences[a] is not None else f"{a} (ignores p)" for a in runs}, where
    labels = {a: f"{a} (p = {_front_label(preferences[a])})" for a in runs}
    return runs, labels, "per arm, p in the legend"


def _rounds_figure(runs: list[Run], value: Any) -> dict[int, Estimate]:
    """round -> Estimate over the runs (seeds) of `value(run)`'s {round: float} series."""
    return over_seeds(value(run) for run in runs)


def _eval_series(run: Run, name: str) -> dict[int, float]:
    out = {0: run.base_eval[name]} if name in run.base_eval else {}
    out.update(
        {int(r["round"]): _num(r["eval"][name]) for r in run.metrics if isinstance(r.get("eval"), dict) and name in r["eval"]}
    )
    return out


def _plot_central_rewards(sweep: Sweep) -> Figure:
    runs, labels, where = _central_points(sweep)
    names = sweep.objectives
    fig, axes = _panels(len(names))
    rounds = {0}
    for ax, name in zip(axes, names, strict=False):
        for i, label in enumerate(sweep.arms):
            if label not in runs:
                continue
            series = _rounds_figure(runs[label], lambda run, name=name: _eval_series(run, name))
            style = _style(i)
            _plot_series(ax, [(r, e.band()) for r, e in series.items()], style.pop("color"), labels[label], **style)
            rounds |= set(series)
        ax.set_title(name, fontsize="medium")
        ax.set_ylabel("mean eval reward")
        _round_axis(ax, sorted(rounds) if runs else [])
    if not runs:
        _no_data(axes[0], "completed point")
    fig.suptitle(f"Held-out eval reward per round at the preference closest to uniform\n({where}; round 0 = base model; {BAND})")
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
        for i, label in enumerate(sweep.arms):
            if label not in runs:
                continue
            style = _style(i)
            series = _rounds_figure(
                runs[label], lambda run, key=key: {int(r["round"]): _num(_get(r, "drift", key)) for r in run.metrics}
            )
            series = {r: e for r, e in series.items() if e.n}
            if series:
                _plot_series(ax, [(r, e.band()) for r, e in series.items()], style.pop("color"), labels[label], **style)
                values += [e.high if math.isfinite(e.high) else e.mean for e in series.values()]
            else:
                ax.plot([], [], ls="none", label=f"{labels[label]}: n/a", **style)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(unit)
        _round_axis(ax, sorted({r for rs in runs.values() for run in rs for r in run.rounds}))
        ax.set_ylim(-0.04 * _top(values), _top(values))  # markers of arms at 0 stay whole
        if not values:
            _no_data(ax, "drift")
    fig.suptitle(f"Client disagreement per round at the preference closest to uniform\n({where}; {BAND})")
    _fig_legend(fig, axes, loc="outside lower center", ncols=min(len(runs), 5) or 1)
    return fig


def _cumulative_upload(run: Run) -> dict[int, float]:
    """round -> bytes uploaded up to its end (round 0: 0)."""
    total, out = 0.0, {0: 0.0}
    for row in run.metrics:
        upload = _num(_get(row, "comm", "upload_bytes"))
        total += upload if math.isfinite(upload) else 0.0
        out[int(row["round"])] = total
    return out


def _plot_reward_vs_bytes(sweep: Sweep) -> Figure:
    runs, labels, where = _central_points(sweep)
    names = sweep.objectives
    sent = {label: _rounds_figure(rs, _cumulative_upload) for label, rs in runs.items()}  # mean over seeds per round
    scale, unit = _byte_unit(max((e.mean for series in sent.values() for e in series.values()), default=0.0))
    fig, axes = _panels(len(names), width=3.9)
    for ax, name in zip(axes, names, strict=False):
        for i, label in enumerate(sweep.arms):
            if label not in runs:
                continue
            series = _rounds_figure(runs[label], lambda run, name=name: _eval_series(run, name))
            raw = [(sent[label][r].mean / scale, e.band()) for r, e in series.items() if r in sent[label]]
            style = _style(i)
            _plot_series(ax, raw, style.pop("color"), labels[label], **style)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(f"cumulative upload ({unit})")
        ax.set_ylabel("mean eval reward")
        ax.set_xlim(left=-0.03 * (ax.get_xlim()[1] or 1.0))
        ax.grid(alpha=0.3)
    if not runs:
        _no_data(axes[0], "completed point")
    fig.suptitle(
        f"Eval reward vs cumulative bytes uploaded, one marker per evaluated round\n({where}; 0 bytes = base model; {BAND})"
    )
    _fig_legend(fig, axes, loc="outside lower center", ncols=min(len(runs), 5) or 1)
    return fig


COMPARISON_PLOTS = {
    "front": _plot_front,
    "hv_rounds": _plot_hv_rounds,
    "rewards": _plot_central_rewards,
    "drift": _plot_central_drift,
    "reward_vs_bytes": _plot_reward_vs_bytes,
}
