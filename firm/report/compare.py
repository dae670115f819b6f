"""The sweep comparison: every arm of a sweep directory (firm.sweep) on one page and one table, over its seeds.

`write_comparison(sweep_dir)` reads sweep.json and the run directory of every point
(firm.report.load), and writes sweep_dir/plots/{front,hv_rounds,rewards,drift,reward_vs_bytes}.png
(firm.report.compare_plots) and a self-contained sweep_dir/comparison.html; `comparison_table(sweep_dir)`
is the plain-text table `firm compare` prints. Every figure is the mean over the arm's seeds with the
half-width of its 95 % Student-t interval (firm.report.seeds, firm.intervals.mean_interval); with one
seed, the value alone. Points that did not complete, whose run directory is missing or unreadable,
or that have no final eval are left out of every figure and listed on the page. A field a run does
not record (the references have no drift) shows as n/a. The hypervolumes are sweep.json's.
"""

from __future__ import annotations

import base64
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm.report.compare_plots import COMPARISON_PLOTS, _pref_text
from firm.report.load import Run, Sweep, _get, _num, load_sweep
from firm.report.plotting import CSS, _esc, _fmt, _fmt_bytes, _fmt_seconds, _png
from firm.report.seeds import Estimate, hypervolume_estimate, sweep_pareto
from firm.rundir import write_atomic

COMPARISON_CAPTIONS = {
    "front": "Final held-out eval reward of each arm at each preference, the mean over seeds with the 95 % t interval "
    "over seeds as error bars; one colour and marker per arm, labelled with its preference (an arm that ignores the "
    "preference is one point); filled: non-dominated among the arm's points, hollow: dominated; ×: the base model, "
    "the hypervolume reference point.",
    "hv_rounds": "Hypervolume of each arm's points evaluated at the same round, the mean over seeds (band: 95 % t "
    "interval over seeds), over the base model's held-out rewards (or, for a sweep without one, under ONE min-max "
    "normalisation of every point's eval at every round of all arms).",
    "rewards": "Held-out eval reward per objective and round at each arm's preference closest to uniform, the mean "
    "over seeds (band: 95 % t interval over seeds).",
    "drift": "Spread of the clients' weights (L1) and of their updates (relative squared) at the same point, mean over "
    "seeds; n/a: the run records none (non-federated references).",
    "reward_vs_bytes": "Eval reward per objective against the bytes uploaded so far (all clients), at the same point, "
    "mean over seeds: what each arm's communication buys.",
}

NOTE = (
    "every figure: mean over the arm's seeds ± half-width of its 95 % Student-t interval (n - 1 dof); one seed: "
    "the value alone (seeds = 1)"
)


@dataclass(frozen=True)
class _ComparisonRow:
    label: str
    preference: tuple[float, ...] | None  # the point closest to uniform; None: the arm ignores p
    rewards: dict[str, Estimate]  # final eval reward per objective at that point, over seeds
    hypervolume: Estimate
    drift_weights: Estimate
    drift_updates: Estimate
    upload_bytes: Estimate
    wall_time_s: Estimate  # per seed summed over the arm's usable points
    seeds: int  # seeds with a usable point closest to uniform
    points: str  # "usable / expected"


def _final_drift(run: Run, key: str) -> float:
    recorded = _get(run.summary, "final_drift", key)
    if recorded is not None:
        return _num(recorded)
    return next((_num(_get(r, "drift", key)) for r in reversed(run.metrics) if _get(r, "drift", key) is not None), math.nan)


def _upload(record: dict[str, Any], run: Run) -> float:
    recorded = record.get("total_upload_bytes")
    return float(recorded) if isinstance(recorded, int | float) else float(run.total_bytes[0])


def _comparison_rows(sweep: Sweep, pareto: dict[str, Any] | None) -> list[_ComparisonRow]:
    rows = []
    for label in sweep.arms:
        central = [p for p in sweep.central_by_seed(label).values() if p.run is not None]
        runs = [p.run for p in central if p.run is not None]
        walls = []
        for seed in sweep.seeds:
            times = [
                _num(p.record.get("wall_time_s", _get(p.run.summary if p.run else {}, "wall_time_s")))
                for p in sweep.usable(label, seed)
            ]
            if times and all(math.isfinite(t) for t in times):
                walls.append(sum(times))
        rows.append(
            _ComparisonRow(
                label=label,
                preference=(central[0].preference if sweep.uses_preference(label) else None) if central else (),
                rewards={n: Estimate.of(p.final[m] for p in central) for m, n in enumerate(sweep.objectives)},
                hypervolume=hypervolume_estimate(pareto, label),
                drift_weights=Estimate.of(_final_drift(run, "weights") for run in runs),
                drift_updates=Estimate.of(_final_drift(run, "updates") for run in runs),
                upload_bytes=Estimate.of(_upload(p.record, p.run) for p in central if p.run is not None),
                wall_time_s=Estimate.of(walls),
                seeds=len(central),
                points=f"{len(sweep.usable(label))}/{max(sweep.expected_count(label), len(sweep.usable(label)))}",
            )
        )
    return rows


def _pref_cell(row: _ComparisonRow) -> str:
    return "any" if row.preference is None else _pref_text(row.preference) if row.preference else "n/a"


def _bytes_cell(e: Estimate, html: bool = False) -> str:
    if e.n == 0:
        return "n/a"
    mean = f"{e.mean:,.0f}" if not html else _fmt_bytes(round(e.mean)) + (f" ({e.mean:,.0f} bytes)" if e.mean >= 1000 else "")
    return mean if not math.isfinite(e.half) or e.half == 0 else f"{mean} ± {e.half:,.0f}"


def _seconds_cell(e: Estimate) -> str:
    if e.n == 0:
        return "n/a"
    return _fmt_seconds(e.mean) + ("" if not math.isfinite(e.half) else f" ± {_fmt_seconds(e.half)}")


def _cells(row: _ComparisonRow, names: list[str], html: bool = False) -> list[str]:
    """The row's figure cells, in the header's order after arm and preference."""
    return [
        *(row.rewards[n].text() for n in names),
        row.hypervolume.text(),
        row.drift_weights.text(),
        row.drift_updates.text(),
        _bytes_cell(row.upload_bytes, html),
        _seconds_cell(row.wall_time_s),
        str(row.seeds),
        row.points,
    ]


def _skipped_text(sweep: Sweep) -> list[str]:
    lines = [f"skipped {p.run_dir}: {p.skipped}" for p in sweep.points if p.skipped is not None]
    if sweep.missing:
        lines.append(f"not run yet: {', '.join(sweep.missing)}")
    return lines


def comparison_table(sweep_dir: Path | str) -> str:
    """One row per arm: final rewards, drift and upload bytes at the point closest to uniform, the
    hypervolume, and wall time over the arm's points, each as mean ± 95 % t half-width over the seeds:
    what `firm compare` prints."""
    sweep = load_sweep(sweep_dir)
    pareto, source = sweep_pareto(sweep)
    header = ["arm", "preference", *sweep.objectives, "hypervolume", "drift.weights", "drift.updates", "upload bytes"]
    header += ["wall time", "seeds", "points"]
    table = [header] + [[row.label, _pref_cell(row), *_cells(row, sweep.objectives)] for row in _comparison_rows(sweep, pareto)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    note = (
        "rewards, drift, upload: final, at the preference closest to uniform (any: the arm ignores it, one point per seed); "
        f"hypervolume: of the arm's final points at each seed over the base model ({source}); wall time: sum over its "
        f"completed points at a seed; points: used / expected; {NOTE}"
    )
    lines += textwrap.wrap(note, width=max(len(lines[0]), 80))
    return "\n".join(lines + _skipped_text(sweep))


def _hypervolume_section(pareto: dict[str, Any] | None, source: str, names: list[str], arms: list[str]) -> list[str]:
    """The hypervolume's reference (one for all seeds, or one per seed) and each arm's hypervolume at each seed."""
    if not pareto:
        return ["<p>No hypervolume: no completed points.</p>"]
    parts = []
    if "scales" in pareto:
        parts.append("<table><tr><th>objective</th><th>reference: base model's held-out reward</th><th>scale</th></tr>")
        for name, ref, scale in zip(names, pareto["reference"], pareto["scales"], strict=False):
            parts.append(f"<tr><td>{_esc(name)}</td><td class=num>{ref:.6g}</td><td class=num>{scale:g}</td></tr>")
        parts.append("</table>")
        parts.append(f'<p class="sub">{_esc(pareto.get("method", ""))}. Source: {_esc(source)}.</p>')
    elif "normalization" in pareto:
        norm = pareto["normalization"]
        parts.append("<table><tr><th>objective</th><th>lower (→ 0)</th><th>upper (→ 1)</th><th>reference (normalised)</th></tr>")
        for name, lo, hi, ref in zip(names, norm["lower"], norm["upper"], pareto["reference"], strict=False):
            parts.append(
                f"<tr><td>{_esc(name)}</td><td class=num>{lo:.6g}</td><td class=num>{hi:.6g}</td><td class=num>{ref:g}</td></tr>"
            )
        parts.append("</table>")
        parts.append(f'<p class="sub">{_esc(norm.get("method", ""))}. Source: {_esc(source)}.</p>')
    by_seed = pareto.get("by_seed") or {}
    if by_seed and not ("scales" in pareto or "normalization" in pareto):
        parts.append("<p>Each seed has its own base model (the reference differs by seed):</p>")
        parts.append("<table><tr><th>seed</th>" + "".join(f"<th>{_esc(n)}</th>" for n in names) + "</tr>")
        for seed, summary in by_seed.items():
            refs = "".join(f"<td class=num>{r:.6g}</td>" for r in summary.get("reference", []))
            parts.append(f"<tr><td>{_esc(seed)}</td>{refs}</tr>")
        parts.append(f'</table><p class="sub">Source: {_esc(source)}.</p>')
    if by_seed:
        parts.append("<p>Hypervolume per arm and seed (the table's figure is their mean and 95 % t interval):</p>")
        parts.append("<table><tr><th>arm</th>" + "".join(f"<th>seed {_esc(s)}</th>" for s in by_seed) + "</tr>")
        for arm in arms:
            cells = "".join(f"<td class=num>{_esc(_fmt(_get(summary, 'hypervolume', arm)))}</td>" for summary in by_seed.values())
            parts.append(f"<tr><td>{_esc(arm)}</td>{cells}</tr>")
        parts.append("</table>")
    return parts


def _comparison_html(sweep: Sweep, pngs: dict[str, bytes]) -> str:
    pareto, source = sweep_pareto(sweep)
    names = sweep.objectives
    model = _get(sweep.data, "key", "config", "model", "name") or "?"
    seeds = ", ".join(str(s) for s in sweep.seeds)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(f'firm comparison: {sweep.path.name}')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_esc(', '.join(sweep.arms))} on {_esc(model)}</h1>",
        f'<p class="sub">preference sweep over objectives {_esc(", ".join(names))}, seeds {_esc(seeds)}; '
        f"{sum(p.skipped is None for p in sweep.points)} of {len(sweep.points) + len(sweep.missing)} points used; "
        f"sweep directory <code>{_esc(sweep.path)}</code></p>",
    ]
    skipped = _skipped_text(sweep)
    if skipped:
        parts.append(
            '<div class="warn"><p>Left out of every figure and of the table:</p><ul>'
            + "".join(f"<li>{_esc(line)}</li>" for line in skipped)
            + "</ul></div>"
        )

    parts.append("<h2>Comparison</h2>")
    head = [
        "arm",
        "preference",
        *names,
        "hypervolume",
        "drift.weights",
        "drift.updates",
        "upload",
        "wall time",
        "seeds",
        "points",
    ]
    parts.append("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>")
    for row in _comparison_rows(sweep, pareto):
        parts.append(
            f"<tr><td>{_esc(row.label)}</td><td>{_esc(_pref_cell(row))}</td>"
            + "".join(f"<td class=num>{_esc(c)}</td>" for c in _cells(row, names, html=True))
            + "</tr>"
        )
    parts.append("</table>")
    parts.append(
        '<p class="sub">Every figure: the mean over the arm\'s seeds ± the half-width of its 95 % Student-t interval '
        "(n − 1 degrees of freedom); with one seed, the value alone. Every seed is evaluated on the same held-out prompts "
        "with the same sampling seeds (data.seed is fixed for the sweep), so the arms are compared paired. "
        "Rewards, drift and upload bytes: final values at each arm's preference closest to uniform (any: the arm ignores "
        "the preference and ran once per seed). "
        + (
            "Hypervolume: of the improvement of the arm's final points at a seed over the base model (fixed reference and scales, below) "
            if pareto and ("scales" in pareto or "normalization" not in pareto)
            else "Hypervolume: of the arm's final points at a seed, normalised together with every other arm's "
        )
        + f"({_esc(source)}). Wall time: summed over the arm's completed points at a seed. Points: used / expected.</p>"
    )

    parts.append("<h2>Hypervolume normalisation</h2>")
    parts += _hypervolume_section(pareto, source, names, sweep.arms)

    parts.append("<h2>Plots</h2>")
    for name, data in pngs.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="{uri}" alt="{_esc(name)}"><figcaption>{_esc(COMPARISON_CAPTIONS.get(name, ""))} '
            f"<small>(plots/{_esc(name)}.png)</small></figcaption></figure>"
        )

    parts.append("<h2>Points</h2>")
    head = ["run", "arm", "algorithm", "seed", "preference", "status", *names, "kl", "upload bytes", "wall time"]
    parts.append("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>")
    for p in sweep.points:
        report = sweep.path / p.run_dir / "report.html"
        run_cell = f'<a href="{_esc(p.run_dir)}/report.html">{_esc(p.run_dir)}</a>' if report.is_file() else _esc(p.run_dir)
        finals = p.final or tuple(math.nan for _ in names)
        sent = p.record.get("total_upload_bytes")
        cells = [_fmt(v) for v in finals] + [
            f"{kl:.3g}" if math.isfinite(kl := _num(p.record.get("final_kl"))) else "n/a",
            f"{sent:,}" if isinstance(sent, int) else "n/a",
            _fmt_seconds(_num(p.record["wall_time_s"]) if p.record.get("wall_time_s") is not None else None),
        ]
        status = str(p.record.get("status")) + ("" if p.skipped is None else " (skipped)")
        pref = _pref_text(p.preference) + ("" if p.uses_preference else " (ignored)")
        parts.append(
            f"<tr><td>{run_cell}</td><td>{_esc(p.label)}</td><td>{_esc(p.algorithm)}</td><td>{_esc(p.seed)}</td>"
            f"<td>{_esc(pref)}</td><td>{_esc(status)}</td>" + "".join(f"<td class=num>{_esc(c)}</td>" for c in cells) + "</tr>"
        )
    parts.append("</table>")

    parts.append("<h2>Sweep config</h2>")
    parts.append(
        '<p class="sub">sweep.json "key": the config shared by every point (without output, algorithm.name, '
        "objectives.preference and federation.seed, which the sweep sets per point; data.seed resolved once), the arms "
        "with their overrides, the seeds and the lattice divisions.</p>"
    )
    key = sweep.data.get("key")
    parts.append(f"<pre>{_esc(json.dumps(key, indent=2)) if key is not None else '(sweep.json has no key)'}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_comparison(sweep_dir: Path | str) -> Path:
    """Write sweep_dir/plots/*.png (COMPARISON_PLOTS) and a self-contained sweep_dir/comparison.html; return its path."""
    sweep = load_sweep(sweep_dir)
    out_dir = sweep.path / "plots"
    out_dir.mkdir(exist_ok=True)
    pngs = {}
    for name, plot in COMPARISON_PLOTS.items():
        pngs[name] = _png(plot(sweep))
        write_atomic(out_dir / f"{name}.png", pngs[name])
    path = sweep.path / "comparison.html"
    write_atomic(path, _comparison_html(sweep, pngs).encode("utf-8"))
    return path
