"""The sweep comparison: every algorithm of a sweep directory (firm.sweep) on one page and one table.

`write_comparison(sweep_dir)` reads sweep.json and the run directory of every point
(firm.report.load), and writes sweep_dir/plots/{front,hv_rounds,rewards,drift,reward_vs_bytes}.png
(firm.report.compare_plots) and a self-contained sweep_dir/comparison.html; `comparison_table(sweep_dir)`
is the plain-text table `firm compare` prints. Points that did not complete, whose run directory is
missing or unreadable, or that have no final eval are left out of every figure and listed on the
page. A field a run does not record (the references have no drift) shows as n/a. The hypervolumes
are sweep.json's (see firm.report.compare_plots).
"""

from __future__ import annotations

import base64
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firm.report.compare_plots import COMPARISON_PLOTS, _pref_text, _sweep_pareto
from firm.report.load import Run, Sweep, _get, _num, load_sweep
from firm.report.plotting import CSS, _esc, _fmt, _fmt_bytes, _fmt_seconds, _png
from firm.rundir import write_atomic

COMPARISON_CAPTIONS = {
    "front": "Final held-out eval reward of every completed point, one colour and marker per algorithm, labelled with its "
    "preference; filled: non-dominated among the algorithm's points, hollow: dominated; ×: the hypervolume reference point.",
    "hv_rounds": "Hypervolume of each algorithm's points evaluated at the same round, under ONE min-max normalisation over "
    "every point's eval at every round of all algorithms (so it differs from the table's, which normalises the final points).",
    "rewards": "Held-out eval reward per objective and round at each algorithm's preference closest to uniform.",
    "drift": "Spread of the clients' weights (L1) and of their updates (relative squared) at the same point; "
    "n/a: the run records none (non-federated references).",
    "reward_vs_bytes": "Eval reward per objective against the bytes uploaded so far (all clients), at the same point: "
    "what each algorithm's communication buys.",
}


@dataclass(frozen=True)
class _ComparisonRow:
    algorithm: str
    preference: tuple[float, ...] | None  # the point closest to uniform
    rewards: dict[str, float]  # final eval reward per objective at that point
    hypervolume: float | None
    drift_weights: float
    drift_updates: float
    upload_bytes: int | None
    wall_time_s: float | None  # summed over the algorithm's usable points
    points: str  # "usable / expected"


def _final_drift(run: Run, key: str) -> float:
    recorded = _get(run.summary, "final_drift", key)
    if recorded is not None:
        return _num(recorded)
    return next((_num(_get(r, "drift", key)) for r in reversed(run.metrics) if _get(r, "drift", key) is not None), math.nan)


def _comparison_rows(sweep: Sweep, pareto: dict[str, Any] | None) -> list[_ComparisonRow]:
    rows = []
    for algorithm in sweep.algorithms:
        point = sweep.central(algorithm)
        run = point.run if point else None
        usable = sweep.usable(algorithm)
        walls = [_num(p.record.get("wall_time_s", _get(p.run.summary if p.run else {}, "wall_time_s"))) for p in usable]
        walls = [w for w in walls if math.isfinite(w)]
        upload: int | None = None
        if point is not None and run is not None:
            recorded = point.record.get("total_upload_bytes")
            upload = int(recorded) if isinstance(recorded, int | float) else run.total_bytes[0]
        hv = _get(pareto or {}, "hypervolume", algorithm)
        expected = sum(p.algorithm == algorithm for p in sweep.points) + sum(
            m.startswith(f"{algorithm}-p") for m in sweep.missing
        )
        rows.append(
            _ComparisonRow(
                algorithm=algorithm,
                preference=point.preference if point else None,
                rewards=dict(zip(sweep.objectives, point.final, strict=True)) if point else {},
                hypervolume=None if hv is None else float(hv),
                drift_weights=_final_drift(run, "weights") if run else math.nan,
                drift_updates=_final_drift(run, "updates") if run else math.nan,
                upload_bytes=upload,
                wall_time_s=sum(walls) if walls else None,
                points=f"{len(usable)}/{expected}",
            )
        )
    return rows


def _skipped_text(sweep: Sweep) -> list[str]:
    lines = [f"skipped {p.run_dir}: {p.skipped}" for p in sweep.points if p.skipped is not None]
    if sweep.missing:
        lines.append(f"not run yet: {', '.join(sweep.missing)}")
    return lines


def comparison_table(sweep_dir: Path | str) -> str:
    """One row per algorithm: final rewards, drift and upload bytes at the point closest to uniform,
    the sweep's hypervolume, and wall time over the algorithm's points: what `firm compare` prints."""
    sweep = load_sweep(sweep_dir)
    pareto, source = _sweep_pareto(sweep)
    header = ["algorithm", "preference", *sweep.objectives, "hypervolume", "drift.weights", "drift.updates", "upload bytes"]
    header += ["wall time", "points"]
    table = [header]
    for row in _comparison_rows(sweep, pareto):
        table.append(
            [
                row.algorithm,
                _pref_text(row.preference) if row.preference else "n/a",
                *(_fmt(row.rewards.get(n)) for n in sweep.objectives),
                _fmt(row.hypervolume),
                _fmt(row.drift_weights),
                _fmt(row.drift_updates),
                "n/a" if row.upload_bytes is None else f"{row.upload_bytes:,}",
                _fmt_seconds(row.wall_time_s),
                row.points,
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    note = (
        "rewards, drift, upload: final, at the preference closest to uniform; hypervolume: the algorithm's final points, "
        f"normalised together with all algorithms' ({source}); wall time: sum over its completed points; points: used / expected"
    )
    lines += textwrap.wrap(note, width=max(len(lines[0]), 80))
    return "\n".join(lines + _skipped_text(sweep))


def _comparison_html(sweep: Sweep, pngs: dict[str, bytes]) -> str:
    pareto, source = _sweep_pareto(sweep)
    names = sweep.objectives
    model = _get(sweep.data, "key", "config", "model", "name") or "?"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(f'firm comparison: {sweep.path.name}')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_esc(', '.join(sweep.algorithms))} on {_esc(model)}</h1>",
        f'<p class="sub">preference sweep over objectives {_esc(", ".join(names))}; '
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
    head = ["algorithm", "preference", *names, "hypervolume", "drift.weights", "drift.updates", "upload", "wall time", "points"]
    parts.append("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>")
    for row in _comparison_rows(sweep, pareto):
        upload = "n/a" if row.upload_bytes is None else _fmt_bytes(row.upload_bytes)
        if row.upload_bytes is not None and row.upload_bytes >= 1000:
            upload += f" ({row.upload_bytes:,} bytes)"
        cells = [_fmt(row.rewards.get(n)) for n in names]
        cells += [_fmt(row.hypervolume), _fmt(row.drift_weights), _fmt(row.drift_updates), upload, _fmt_seconds(row.wall_time_s)]
        parts.append(
            f"<tr><td>{_esc(row.algorithm)}</td><td>{_esc(_pref_text(row.preference) if row.preference else 'n/a')}</td>"
            + "".join(f"<td class=num>{_esc(c)}</td>" for c in cells)
            + f"<td class=num>{_esc(row.points)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        '<p class="sub">Rewards, drift and upload bytes: final values at each algorithm\'s preference closest to uniform. '
        + (
            "Hypervolume: of the improvement of all the algorithm's final points over the base model (fixed reference and scales, below) "
            if pareto and "scales" in pareto
            else "Hypervolume: of all the algorithm's final points, normalised together with every other algorithm's "
        )
        + f"({_esc(source)}). Wall time: summed over the algorithm's completed points. Points: used / expected.</p>"
    )

    parts.append("<h2>Hypervolume normalisation</h2>")
    if pareto and "scales" in pareto:
        parts.append("<table><tr><th>objective</th><th>reference: base model's held-out reward</th><th>scale</th></tr>")
        for name, ref, scale in zip(names, pareto["reference"], pareto["scales"], strict=False):
            parts.append(f"<tr><td>{_esc(name)}</td><td class=num>{ref:.6g}</td><td class=num>{scale:g}</td></tr>")
        parts.append("</table>")
        parts.append(f'<p class="sub">{_esc(pareto.get("method", ""))}. Source: {_esc(source)}.</p>')
    elif pareto:
        norm = pareto["normalization"]
        parts.append("<table><tr><th>objective</th><th>lower (→ 0)</th><th>upper (→ 1)</th><th>reference (normalised)</th></tr>")
        for name, lo, hi, ref in zip(names, norm["lower"], norm["upper"], pareto["reference"], strict=False):
            parts.append(
                f"<tr><td>{_esc(name)}</td><td class=num>{lo:.6g}</td><td class=num>{hi:.6g}</td><td class=num>{ref:g}</td></tr>"
            )
        parts.append("</table>")
        parts.append(f'<p class="sub">{_esc(norm.get("method", ""))}. Source: {_esc(source)}.</p>')
    else:
        parts.append("<p>No hypervolume: no completed points.</p>")

    parts.append("<h2>Plots</h2>")
    for name, data in pngs.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="{uri}" alt="{_esc(name)}"><figcaption>{_esc(COMPARISON_CAPTIONS.get(name, ""))} '
            f"<small>(plots/{_esc(name)}.png)</small></figcaption></figure>"
        )

    parts.append("<h2>Points</h2>")
    head = ["run", "algorithm", "preference", "status", *names, "kl", "upload bytes", "wall time"]
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
        parts.append(
            f"<tr><td>{run_cell}</td><td>{_esc(p.algorithm)}</td><td>{_esc(_pref_text(p.preference))}</td><td>{_esc(status)}</td>"
            + "".join(f"<td class=num>{_esc(c)}</td>" for c in cells)
            + "</tr>"
        )
    parts.append("</table>")

    parts.append("<h2>Sweep config</h2>")
    parts.append(
        '<p class="sub">sweep.json "key": the config shared by every point (without output, algorithm.name and '
        "objectives.preference, which the sweep sets per point), the algorithms and the lattice divisions.</p>"
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
