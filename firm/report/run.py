"""The run report: plots and one self-contained HTML page from a run directory (docs/design.md sections 6-7).

`write_plots(run_dir)` draws PLOTS, the per-round metrics of `metrics.jsonl` (fields in the README),
into `run_dir/plots/*.png`; `write_report(run_dir)` also writes `run_dir/report.html`, a single file
with the PNGs embedded as base64 data URIs so it can be mailed on its own; `report_table(run_dir)` is
the short plain-text table `firm train` prints at the end. The inputs are listed in firm.report.load.

With `palette.json` (a run trained toward MAP targets, firm.palette) the page gains a palette
section: every target against the held-out value of each evaluated round, and the palette's two
figures, drawn by firm.palette.plots.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.report.load import Run, _band, _get, _num, load_run
from firm.report.plotting import (
    CSS,
    WIDTH,
    _byte_unit,
    _esc,
    _figure,
    _fmt,
    _fmt_bytes,
    _fmt_seconds,
    _legend,
    _no_data,
    _note,
    _plot_series,
    _png,
    _round_axis,
    _top,
)
from firm.report.privacy import privacy_html, privacy_lines
from firm.rundir import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_CLIENT_LINES = 10  # beyond this many clients, weights are drawn as one grey cloud plus the mean


# ---------------------------------------------------------------------------------------------
# Plots: each function takes a Run and returns a Figure; `write_plots` saves them.


def _has_bands(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), dict) and any(_band(v) for v in r[key].values()) for r in rows) or any(
        _band(r.get(key)) for r in rows
    )


def _plot_eval_rewards(run: Run) -> Figure:
    fig, (ax,) = _figure()
    base = run.base_eval
    plotted = False
    se_base = run.base_eval_se
    for i, name in enumerate(run.objectives):
        raw: list[tuple[int, Any]] = [(0, base[name])] if name in base else []
        raw += [(r["round"], r["eval"][name]) for r in run.metrics if r.get("eval") and name in r["eval"]]
        plotted |= _plot_series(ax, raw, f"C{i}", name)
        # error bars: +- 1 standard error of each evaluation (prompts as the unit), where recorded
        errs = [(0, base[name], se_base.get(name))] if name in base else []
        errs += [
            (r["round"], r["eval"][name], (r.get("eval_se") or {}).get(name))
            for r in run.metrics
            if r.get("eval") and name in r["eval"]
        ]
        errs = [(x, y, e) for x, y, e in errs if isinstance(y, (int, float)) and isinstance(e, (int, float))]
        if errs:
            xs, ys, es = zip(*errs, strict=True)
            ax.errorbar(xs, ys, yerr=es, fmt="none", ecolor=f"C{i}", capsize=2, lw=0.8)
    if not plotted:
        _no_data(ax, "evaluation")
    title = f"Held-out eval reward of the {run.subject}"
    ax.set_title(title + (" (round 0 = base model)" if base else ""))
    ax.set_ylabel("mean reward per completion")
    _round_axis(ax, [0, *run.rounds] if base else run.rounds)
    band = " (band: min–max over clients)" if _has_bands(run.metrics, "eval") else ""
    bars = "; bars: ± 1 standard error" if any(r.get("eval_se") for r in run.metrics) else ""
    _legend(ax, title="objective" + band + bars, fontsize="small")
    return fig


def _plot_kl(run: Run) -> Figure:
    fig, (ax,) = _figure()
    raw: list[tuple[int, Any]] = [(0, run.base_kl)] if run.base_kl is not None else []
    raw += [(r["round"], r["kl"]) for r in run.metrics if r.get("kl") is not None]
    if not _plot_series(ax, raw, "C3"):
        _no_data(ax, "KL")
    _legend(ax, fontsize="small")  # only the min-max band of a `local` reference is labelled
    ax.set_title(f"KL of the {run.subject} to the reference (held-out prompts)")
    ax.set_ylabel("KL(π_θ || π_ref)  (nats per token)")
    _round_axis(ax, [0, *run.rounds] if run.base_kl is not None else run.rounds)
    return fig


def _client_ids(run: Run) -> list[str]:
    ids = {c for row in run.metrics for c in (row.get("weights") or {})}
    return sorted(ids, key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c))


def _plot_weights(run: Run) -> Figure:
    """lambda_m per client and round (gaps where a client sat a round out) against the preference p_m."""
    m_total = run.num_objectives
    names = run.objectives or [f"objective {m + 1}" for m in range(m_total)]
    p = run.preference
    rounds = run.rounds
    clients = _client_ids(run)
    shown = [0] if m_total <= 2 else list(range(m_total))  # for M = 2, lambda_2 = 1 - lambda_1
    ncols = min(len(shown), 3)
    nrows = math.ceil(len(shown) / ncols) if shown else 1
    if len(shown) == 1:
        fig, axes = _figure()
    else:
        fig, axes = _figure(ncols, nrows, width=3.3 * ncols, height=2.6 * nrows + 0.6)

    def series(client: str, m: int) -> list[float]:
        out = []
        for row in run.metrics:
            w = (row.get("weights") or {}).get(client)
            out.append(float(w[m]) if w is not None and m < len(w) else math.nan)
        return out

    for ax, m in zip(axes, shown, strict=False):
        if len(clients) <= MAX_CLIENT_LINES:
            for i, client in enumerate(clients):
                ax.plot(rounds, series(client, m), marker="o", ms=5, lw=1.2, color=f"C{i}", label=f"client {client}")
        else:
            per_client = [series(c, m) for c in clients]
            for ys in per_client:
                ax.plot(rounds, ys, ls="none", marker=".", color="0.6", alpha=0.5)
            ax.plot([], [], ls="none", marker=".", color="0.6", label=f"clients ({len(clients)})")
            means = [_nanmean([ys[t] for ys in per_client]) for t in range(len(rounds))]
            ax.plot(rounds, means, marker="o", color="C0", label="mean over clients")
        if m < len(p):
            ax.axhline(p[m], ls="--", color="k", lw=1.2, label=f"preference p{_sub(m + 1)} = {p[m]:.2f}")
        _round_axis(ax, rounds)
        if len(shown) == 1:
            ax.set_ylabel(f"λ{_sub(m + 1)}  (weight on {names[m]})")
            ax.set_title(f"Client mean weight per round (λ{_sub(2)} = 1 − λ{_sub(1)})")
            _legend(ax, fontsize="small", ncols=2 if len(clients) > 5 else 1)
        else:
            pref = f" (p{_sub(m + 1)} = {p[m]:.2f})" if m < len(p) else ""
            ax.set_title(f"λ{_sub(m + 1)}: {names[m]}{pref}", fontsize="medium")
            ax.set_ylabel("weight")
    if not clients:
        for ax in axes[: len(shown)]:
            _no_data(ax, "client weights")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    if len(shown) > 1:
        fig.suptitle("Client mean weight per objective and round (dashed: preference)")
        handles, labels = axes[0].get_legend_handles_labels()
        labels = [lab.split(" = ")[0].replace(f"p{_sub(1)}", "p") if lab.startswith("preference") else lab for lab in labels]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize="small")
    return fig


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _sub(n: int) -> str:
    return str(n).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def _plot_drift(run: Run) -> Figure:
    fig, (left, right) = _figure(2, 1, width=WIDTH + 1.6)
    rounds = run.rounds
    w = [_num(_get(r, "drift", "weights")) for r in run.metrics]
    u = [_num(_get(r, "drift", "updates")) for r in run.metrics]
    left.plot(rounds, w, marker="o", color="C4")
    left.set_title("Weight drift", fontsize="medium")
    left.set_ylabel("mean ‖λ̄ᵢ − mean λ̄‖₁  (unitless)")
    right.plot(rounds, u, marker="o", color="C5")
    right.set_title("Update drift", fontsize="medium")
    right.set_ylabel("mean ‖Δᵢ − Δ̄‖² / ‖Δ̄‖²  (unitless)")
    for ax, ys in ((left, w), (right, u)):
        _round_axis(ax, rounds)
        ax.set_ylim(0, _top(ys))
        if all(math.isnan(v) for v in ys):
            _no_data(ax, "drift")
    fig.suptitle("Client disagreement per round")
    return fig


def _plot_comm(run: Run) -> Figure:
    fig, (left, right) = _figure(2, 1, width=WIDTH + 1.6)
    rounds = run.rounds
    up = [_num(_get(r, "comm", "upload_bytes")) for r in run.metrics]
    down = [_num(_get(r, "comm", "download_bytes")) for r in run.metrics]
    scale, unit = _byte_unit(max([v for v in up + down if not math.isnan(v)], default=0.0))
    left.plot(rounds, [v / scale for v in up], marker="o", label="upload (clients → server)")
    left.plot(rounds, [v / scale for v in down], marker="s", ls="--", mfc="none", label="download (server → clients)")
    left.set_title("Bytes per round, all clients", fontsize="medium")
    left.set_ylabel(f"{unit} per round")
    top = max([v / scale for v in up + down if not math.isnan(v)], default=0.0)
    left.set_ylim(bottom=0, top=top * 1.35 if top > 0 else 1.0)  # 0 bytes (references): keep a visible axis
    _legend(left, fontsize="small", loc="upper left")
    if not any(v for v in up + down if not math.isnan(v)):
        _note(left, "nothing communicated")
    cumulative, total = [], 0.0
    for v in up:
        total += 0.0 if math.isnan(v) else v
        cumulative.append(total)
    cscale, cunit = _byte_unit(total)
    right.plot(rounds, [v / cscale for v in cumulative], marker="o", color="C2")
    right.set_title("Cumulative upload", fontsize="medium")
    right.set_ylabel(f"{cunit} uploaded so far")
    right.set_ylim(0, _top([v / cscale for v in cumulative]))
    for ax in (left, right):
        _round_axis(ax, rounds)
    fig.suptitle("Communication (encoded adapter payloads)")
    return fig


def _plot_train_rewards(run: Run) -> Figure:
    fig, (ax,) = _figure()
    if not any(_get(r, "train", "reward") for r in run.metrics):
        _no_data(ax, "training reward")
    for name in run.objectives:
        points = [
            (r["round"], _get(r, "train", "reward")[name]) for r in run.metrics if name in (_get(r, "train", "reward") or {})
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_title("Training reward (mean over the round's client rollouts)")
    ax.set_ylabel("mean reward per completion")
    _round_axis(ax, run.rounds)
    _legend(ax, title="objective")
    return fig


PLOTS = {
    "eval_rewards": _plot_eval_rewards,
    "kl": _plot_kl,
    "weights": _plot_weights,
    "drift": _plot_drift,
    "comm": _plot_comm,
    "train_rewards": _plot_train_rewards,
}


def _palette_figures(run: Run) -> dict[str, Figure]:
    """The palette's bars (target, reference, predicted, achieved = final eval) and, for M = 2, its region."""
    from firm.palette.plots import plot_palette, plot_region

    if run.palette is None:
        return {}
    achieved = run.final_eval or None
    figures = {"palette": plot_palette(run.palette, achieved=achieved)}
    if run.palette.get("region"):
        figures["palette_region"] = plot_region(run.palette["region"], run.palette, achieved=achieved)
    return figures


def _render(run: Run) -> dict[str, bytes]:
    """name -> PNG bytes, one per entry of PLOTS (and the palette's), written to run_dir/plots/<name>.png."""
    out_dir = run.path / "plots"
    out_dir.mkdir(exist_ok=True)
    figures = {name: plot(run) for name, plot in PLOTS.items()} | _palette_figures(run)
    pngs = {}
    for name, fig in figures.items():
        pngs[name] = _png(fig)
        write_atomic(out_dir / f"{name}.png", pngs[name])
    return pngs


def write_plots(run_dir: Path | str) -> list[Path]:
    """Draw every plot of the run into run_dir/plots/ and return the PNG paths."""
    run = load_run(run_dir)
    return [run.path / "plots" / f"{name}.png" for name in _render(run)]


# ---------------------------------------------------------------------------------------------
# Text: the plain-text table and the HTML page


def _table_rows(run: Run) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, base, final, change) per objective, then KL; None where unknown."""
    base, final = run.base_eval, run.final_eval
    pairs = [(name, base.get(name), final.get(name)) for name in run.objectives]
    pairs.append(("kl (per token)", run.base_kl, run.final_kl))
    return [(label, b, f, f - b if b is not None and f is not None else None) for label, b, f in pairs]


def report_table(run_dir: Path | str) -> str:
    """objective | base | final | change, then KL and bytes sent: what `firm train` prints at the end."""
    run = load_run(run_dir)
    paired = run.change_se()
    rows = [("objective", "base", "final", "change", "± se" if paired else "")]
    rows += [
        (label, _fmt(b), _fmt(f), _fmt(c, signed=True), _fmt(paired[label]) if paired.get(label) is not None else "")
        for label, b, f, c in _table_rows(run)
    ]
    w0 = max(len(r[0]) for r in rows)
    w = [max(len(r[i]) for r in rows) for i in (1, 2, 3, 4)]
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w[0]}}  {r[2]:>{w[1]}}  {r[3]:>{w[2]}}  {r[4]:>{w[3]}}".rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if paired:
        num = len(run.summary.get("initial_eval_prompt_means") or [])
        lines.append(
            f"± se: standard error of the change, paired over the {num} held-out prompts (same prompts and sampling seeds)"
        )
    up, down = run.total_bytes
    lines.append(f"bytes sent over {len(run.metrics)} rounds: {_fmt_bytes(up)} up, {_fmt_bytes(down)} down")
    lines += privacy_lines(run)
    if run.palette is not None:
        targets = {n: v for n, v in run.palette["targets"].items() if v is not None}
        lines.append("palette targets vs achieved, per evaluated round (round 0 = base):")
        for rnd, gaps in palette_rows(run):
            cells = [
                f"{n} {t + g:.4f} {'met' if g >= 0 else f'({g:+.4f})'}" if g is not None else f"{n} n/a"
                for (n, t), g in zip(targets.items(), gaps.values(), strict=True)
            ]
            lines.append(f"  round {rnd}: " + ", ".join(cells))
    return "\n".join(lines)


CAPTIONS = {
    "eval_rewards": "Mean reward of the global adapter on the held-out prompts, per objective (round 0 = base model).",
    "kl": "Mean per-token KL of the global adapter to the reference model on the held-out completions.",
    "weights": "Each participating client's mean objective weights λ over its local steps; dashed: the preference p.",
    "drift": "Client disagreement: spread of the clients' weights (L1) and of their updates (relative squared).",
    "comm": "Bytes of the encoded payloads per round over all clients, and the running total uploaded.",
    "train_rewards": "Mean reward of the clients' training rollouts per round and objective.",
    "palette": "MAP palette: the reference's mean, the targets, the tilted reference's predicted values and the final adapter's held-out values.",
    "palette_region": "Targets the reference's samples can reach (coloured by the KL the tilt needs), with the palette's points.",
}


def _rewards_text(rewards: Any) -> str:
    if not isinstance(rewards, dict) or not rewards:
        return ""
    parts = []
    for name, value in rewards.items():
        try:
            parts.append(f"{name} {float(value):.3f}")
        except (TypeError, ValueError):
            parts.append(f"{name} {value}")
    return " · ".join(parts)


def _html(run: Run, pngs: dict[str, bytes]) -> str:
    s = run.summary
    algorithm = s.get("algorithm", "run")
    model = s.get("model")
    pref = ", ".join(f"{x:g}" for x in run.preference)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(f'firm report: {run.path.name}')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_esc(algorithm)}{f' on {_esc(model)}' if model else ''}</h1>",
        f'<p class="sub">objectives {_esc(", ".join(run.objectives))}; preference ({_esc(pref)}); '
        f"run directory <code>{_esc(run.path)}</code></p>",
    ]
    status = s.get("status", "unknown (no summary.json: run in progress?)")
    if status != "completed":
        detail = f": {s['error']}" if s.get("error") else ""
        parts.append(f'<p class="warn">status {_esc(status)}{_esc(detail)}; figures below cover the recorded rounds.</p>')

    parts.append("<h2>Base vs final</h2>")
    paired = run.change_se()
    se_head = "<th>± se (paired)</th>" if paired else ""
    parts.append(f"<table><tr><th>objective</th><th>base</th><th>final</th><th>change</th>{se_head}</tr>")
    for i, (label, b, f, change) in enumerate(_table_rows(run)):
        is_reward = i < len(run.objectives)  # for KL, higher is neither good nor bad by itself
        cls = "" if not is_reward or change is None or round(change, 4) == 0 else "up" if change > 0 else "down"
        se_cell = f"<td class=num>{_fmt(paired.get(label))}</td>" if paired else ""
        parts.append(
            f"<tr><td>{_esc(label)}</td><td class=num>{_fmt(b)}</td><td class=num>{_fmt(f)}</td>"
            f'<td class="{f"num {cls}" if cls else "num"}">{_fmt(change, signed=True)}</td>{se_cell}</tr>'
        )
    parts.append("</table>")
    up, down = run.total_bytes
    facts = [
        ("rounds", str(s.get("rounds", len(run.metrics)))),
        ("bytes uploaded", f"{_fmt_bytes(up)} ({up:,} bytes)"),
        ("bytes downloaded", f"{_fmt_bytes(down)} ({down:,} bytes)"),
        ("wall time", _fmt_seconds(s.get("wall_time_s"))),
        ("status", str(status)),
    ]
    for key, label in (("adapter_parameters", "adapter parameters"), ("device", "device"), ("firm_version", "firm version")):
        if key in s:
            facts.append((label, f"{s[key]:,}" if isinstance(s[key], int) else str(s[key])))
    if isinstance(s.get("compute_dtype"), dict):
        facts.append(("compute dtype", f"{s['compute_dtype'].get('dtype')} ({s['compute_dtype'].get('reason')})"))
    parts.append("<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts) + "</table>")

    if run.palette is not None:
        parts.extend(_palette_html(run))
    parts.extend(privacy_html(run))

    parts.append("<h2>Plots</h2>")
    for name, data in pngs.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="{uri}" alt="{_esc(name)}"><figcaption>{_esc(CAPTIONS.get(name, ""))} '
            f"<small>(plots/{_esc(name)}.png)</small></figcaption></figure>"
        )

    if run.samples:
        parts.append(f"<h2>Sample completions on held-out prompts ({len(run.samples)})</h2>")
        for i, sample in enumerate(run.samples, start=1):
            parts.append(
                f'<div class="sample"><p><b>{i}. prompt</b></p><div class="completion">{_esc(sample.get("prompt", ""))}</div>'
                "<table><tr><th>base model</th><th>final model</th></tr><tr>"
            )
            for side in ("base", "final"):
                rewards = _rewards_text(sample.get(f"{side}_rewards"))
                parts.append(
                    f'<td><div class="completion">{_esc(sample.get(side, ""))}</div>'
                    f'<div class="rewards">{_esc(rewards)}</div></td>'
                )
            parts.append("</tr></table></div>")

    parts.append("<h2>Resolved config</h2>")
    parts.append(f"<pre>{_esc(run.config_text) if run.config_text is not None else '(no config.toml)'}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def palette_rows(run: Run) -> list[tuple[int, dict[str, float | None]]]:
    """Per evaluated round (0 = base), achieved - target for every constrained value (>= 0: met)."""
    assert run.palette is not None
    targets = {n: v for n, v in run.palette["targets"].items() if v is not None}
    evals = [(0, run.base_eval)] + [(int(r["round"]), r["eval"]) for r in run.metrics if r.get("eval")]
    return [(rnd, {n: (_num(ev[n]) - t if n in ev else None) for n, t in targets.items()}) for rnd, ev in evals]


def _palette_html(run: Run) -> list[str]:
    pal = run.palette
    assert pal is not None
    targets = {n: v for n, v in pal["targets"].items() if v is not None}
    lam = ", ".join(f"{n} {v:.4g}" for n, v in pal["lambda"].items())
    pref = ", ".join(f"{n} {v:.3f}" for n, v in pal["preference"].items() if v is not None)
    parts = [
        "<h2>Palette: targets vs achieved</h2>",
        f"<p>Targets <code>{_esc(', '.join(pal['spec']))}</code>: {_esc(pal['reason'])}. "
        f"λ = ({_esc(lam)}); trained with preference ({_esc(pref or 'objectives.preference')}); "
        f"KL of the tilted reference {pal['kl']:.4f} nats. Solved from {pal.get('clients', '?')} clients' statistics "
        f"({pal['num_samples']:g} reference samples, {pal.get('stat_rounds', '?')} rounds).</p>",
        "<table><tr><th>round</th>" + "".join(f"<th>{_esc(n)} (target {t:.4f})</th>" for n, t in targets.items()) + "</tr>",
    ]
    for rnd, gaps in palette_rows(run):
        cells = []
        for n, t in targets.items():
            gap = gaps[n]
            if gap is None:
                cells.append("<td>n/a</td>")
                continue
            cls = "up" if gap >= 0 else "down"
            cells.append(f'<td class="num {cls}">{t + gap:.4f} ({"met" if gap >= 0 else f"{gap:+.4f}"})</td>')
        parts.append(f"<tr><td>{rnd}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def write_report(run_dir: Path | str) -> Path:
    """Write run_dir/plots/*.png and a self-contained run_dir/report.html; return the HTML path."""
    run = load_run(run_dir)
    pngs = _render(run)
    path = run.path / "report.html"
    write_atomic(path, _html(run, pngs).encode("utf-8"))
    return path
