"""Run reports: plots and one self-contained HTML page from a run directory (DESIGN.md sections 5-6).

`write_plots(run_dir)` draws the per-round metrics of `metrics.jsonl` (fields in the README) into
`run_dir/plots/*.png`; `write_report(run_dir)` also writes `run_dir/report.html`, a single file with
the PNGs embedded as base64 data URIs so it can be mailed on its own; `report_table(run_dir)` is the
short plain-text table `firm train` prints at the end. `firm report RUN_DIR` runs the first two and
prints the third. Reading needs only the files, so a report can be made while a run is still going
(rounds so far) or after it failed.

`write_comparison(sweep_dir)` and `comparison_table(sweep_dir)` do the same for a sweep directory
(firm.sweep: sweep.json plus one run directory per point): every algorithm on the same figures,
hypervolumes from firm.pareto. `firm compare SWEEP_DIR` runs both. See the section at the end.

Inputs, all in the run directory:

    metrics.jsonl   required; one JSON object per round
    summary.json    optional (absent while a run is in progress); initial_eval / initial_kl give round 0
    config.toml     optional; shown verbatim
    samples.jsonl   optional; sample completions of the base and the final model on held-out prompts,
                    one JSON object per line:
                        {"prompt": str, "base": str, "final": str,
                         "base_rewards": {objective: float}, "final_rewards": {objective: float}}
                    "base" / "final" are the completions of the initial and of the final adapter for
                    that prompt, the rewards are each completion's score per objective.

With `palette.json` (a run trained toward MAP targets, firm.palette) the page gains a palette
section: every target against the held-out value of each evaluated round, and the palette's two
figures, drawn by firm.palette.plots.

This module and firm.palette.plots are the only ones that import matplotlib. Both use the
object-oriented API with the Agg canvas (never pyplot), so they need no display and leave the
caller's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import itertools
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from firm.pareto import Normalization, hypervolume, hypervolume_report, non_dominated
from firm.rundir import write_atomic

DPI = 100
WIDTH, HEIGHT = 6.4, 3.8  # inches: 640 x 380 px at DPI
MAX_CLIENT_LINES = 10  # beyond this many clients, weights are drawn as one grey cloud plus the mean


class ReportError(ValueError):
    """The directory is not a readable run directory; the message names the file (and line)."""


@dataclass(frozen=True)
class Run:
    """The files of one run directory, parsed."""

    path: Path
    metrics: list[dict[str, Any]]  # one row per round, as in metrics.jsonl
    summary: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    palette: dict[str, Any] | None = None  # palette.json, when the run trained toward MAP targets

    @property
    def objectives(self) -> list[str]:
        if self.summary.get("objectives"):
            return [str(n) for n in self.summary["objectives"]]
        for row in self.metrics:
            for source in (row.get("eval"), _get(row, "train", "reward")):
                if isinstance(source, dict) and source:
                    return list(source)
        return []

    @property
    def num_objectives(self) -> int:
        if self.objectives:
            return len(self.objectives)
        return next((len(w) for row in self.metrics for w in (row.get("weights") or {}).values()), 0)

    @property
    def preference(self) -> list[float]:
        p = self.summary.get("preference")
        if p:
            return [float(x) for x in p]
        m = self.num_objectives
        return [1.0 / m] * m if m else []

    @property
    def subject(self) -> str:
        """What the eval and KL figures are measured on, for plot titles."""
        return "clients' own adapters" if self.summary.get("reference") == "local" else "global adapter"

    @property
    def rounds(self) -> list[int]:
        return [int(row["round"]) for row in self.metrics]

    @property
    def base_eval(self) -> dict[str, float]:
        return {k: _num(v) for k, v in (self.summary.get("initial_eval") or {}).items()}

    @property
    def final_eval(self) -> dict[str, float]:
        """summary.final_eval; while running or after a failure, the last evaluated round."""
        final = self.summary.get("final_eval")
        if not final:
            last = next((row for row in reversed(self.metrics) if row.get("eval")), None)
            final = last["eval"] if last else {}
        return {k: _num(v) for k, v in final.items()}

    @property
    def base_kl(self) -> float | None:
        kl = self.summary.get("initial_kl")
        return None if kl is None else _num(kl)

    @property
    def final_kl(self) -> float | None:
        if self.summary.get("final_kl") is not None:
            return _num(self.summary["final_kl"])
        return next((_num(row["kl"]) for row in reversed(self.metrics) if row.get("kl") is not None), None)

    @property
    def total_bytes(self) -> tuple[int, int]:
        """(upload, download) over all rounds."""
        up = self.summary.get("total_upload_bytes")
        down = self.summary.get("total_download_bytes")
        if up is None or down is None:
            up = sum(int(_get(r, "comm", "upload_bytes") or 0) for r in self.metrics)
            down = sum(int(_get(r, "comm", "download_bytes") or 0) for r in self.metrics)
        return int(up), int(down)


# ---------------------------------------------------------------------------------------------
# Reading


def _get(row: dict[str, Any], *keys: str) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _num(value: Any) -> float:
    """A metric as a float: None -> nan; a spread over clients {"mean", "std", "min", "max"} (the
    parent directory of a `local` reference run) -> its mean."""
    if isinstance(value, dict):
        value = value.get("mean")
    return math.nan if value is None else float(value)


def _band(value: Any) -> tuple[float, float] | None:
    """(min, max) of a spread over clients, None for a plain number."""
    if isinstance(value, dict) and value.get("min") is not None and value.get("max") is not None:
        return float(value["min"]), float(value["max"])
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ReportError(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
    return rows


def load_run(run_dir: Path | str) -> Run:
    """Parse a run directory; ReportError (one line, naming file and line) if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(f"{path}: no metrics.jsonl, not a firm run directory")
    metrics = _read_jsonl(metrics_path)
    for lineno, row in enumerate(metrics, start=1):
        if not isinstance(row.get("round"), int):
            raise ReportError(f"{metrics_path}: row {lineno} has no integer 'round'")
    if not metrics:
        raise ReportError(f"{metrics_path}: no rounds recorded yet")
    summary: dict[str, Any] = {}
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ReportError(f"{summary_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
        if not isinstance(summary, dict):
            raise ReportError(f"{summary_path}: not a JSON object")
    if "initial_eval" not in summary and summary.get("clients"):
        # a `local` reference parent: every client starts from the same adapter and is evaluated on
        # the same prompts with the same seed, so any client's initial figures are the base figures
        first = path / str(summary["clients"][0]) / "summary.json"
        try:
            client = json.loads(first.read_text(encoding="utf-8"))
            summary = {**summary, "initial_eval": client["initial_eval"], "initial_kl": client["initial_kl"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # base figures shown as n/a
    config_path = path / "config.toml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    samples_path = path / "samples.jsonl"
    samples = _read_jsonl(samples_path) if samples_path.is_file() else []
    palette = None
    palette_path = path / "palette.json"
    if palette_path.is_file():
        try:
            palette = json.loads(palette_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ReportError(f"{palette_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
    return Run(path=path, metrics=metrics, summary=summary, config_text=config_text, samples=samples, palette=palette)


# ---------------------------------------------------------------------------------------------
# Plots: each function takes a Run and returns a Figure; `write_plots` saves them.


def _figure(ncols: int = 1, nrows: int = 1, width: float = WIDTH, height: float = HEIGHT) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    return fig, axes


def _round_axis(ax: Axes, rounds: list[int]) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        pad = 0.3 + 0.02 * (max(rounds) - min(rounds))  # edge markers stay whole on long runs
        ax.set_xlim(min(rounds) - pad, max(rounds) + pad)
    ax.grid(alpha=0.3)


def _legend(ax: Axes, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _no_data(ax: Axes, what: str) -> None:
    _note(ax, f"no {what} recorded")


def _note(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.4",
        bbox={"fc": "white", "ec": "none"},
    )


def _plot_series(ax: Axes, raw: Sequence[tuple[float, Any]], color: str, label: str | None = None, **line: Any) -> bool:
    """Plot (x, value) points, values plain or spreads over clients (mean line, min-max band); False if none.

    `line` overrides the line style (marker "o" by default)."""
    points = [(x, _num(v)) for x, v in raw if not math.isnan(_num(v))]
    if not points:
        return False
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, **{"marker": "o", **line}, color=color, label=label)
    bands = [(x, *b) for x, v in raw if (b := _band(v)) is not None]
    if bands:
        bx, lo, hi = zip(*bands, strict=True)
        ax.fill_between(bx, lo, hi, color=color, alpha=0.2, lw=0, label=None if label else "min–max over clients")
    return True


def _has_bands(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), dict) and any(_band(v) for v in r[key].values()) for r in rows) or any(
        _band(r.get(key)) for r in rows
    )


def _byte_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def _plot_eval_rewards(run: Run) -> Figure:
    fig, (ax,) = _figure()
    base = run.base_eval
    plotted = False
    for i, name in enumerate(run.objectives):
        raw: list[tuple[int, Any]] = [(0, base[name])] if name in base else []
        raw += [(r["round"], r["eval"][name]) for r in run.metrics if r.get("eval") and name in r["eval"]]
        plotted |= _plot_series(ax, raw, f"C{i}", name)
    if not plotted:
        _no_data(ax, "evaluation")
    title = f"Held-out eval reward of the {run.subject}"
    ax.set_title(title + (" (round 0 = base model)" if base else ""))
    ax.set_ylabel("mean reward per completion")
    _round_axis(ax, [0, *run.rounds] if base else run.rounds)
    band = " (band: min–max over clients)" if _has_bands(run.metrics, "eval") else ""
    _legend(ax, title="objective" + band, fontsize="small")
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


def _top(values: list[float]) -> float:
    """An upper y limit leaving room above the largest finite value (markers are not clipped)."""
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0) * 1.12 or 1.0


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


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def write_plots(run_dir: Path | str) -> list[Path]:
    """Draw every plot of the run into run_dir/plots/ and return the PNG paths."""
    run = load_run(run_dir)
    return [run.path / "plots" / f"{name}.png" for name in _render(run)]


# ---------------------------------------------------------------------------------------------
# Text: the plain-text table and the HTML page


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _fmt_bytes(n: int) -> str:
    scale, unit = _byte_unit(n)
    return f"{n} bytes" if scale == 1.0 else f"{n / scale:.1f} {unit}"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    minutes, secs = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _table_rows(run: Run) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, base, final, change) per objective, then KL; None where unknown."""
    base, final = run.base_eval, run.final_eval
    pairs = [(name, base.get(name), final.get(name)) for name in run.objectives]
    pairs.append(("kl (per token)", run.base_kl, run.final_kl))
    return [(label, b, f, f - b if b is not None and f is not None else None) for label, b, f in pairs]


def report_table(run_dir: Path | str) -> str:
    """objective | base | final | change, then KL and bytes sent: what `firm train` prints at the end."""
    run = load_run(run_dir)
    rows = [("objective", "base", "final", "change")]
    rows += [(label, _fmt(b), _fmt(f), _fmt(c, signed=True)) for label, b, f, c in _table_rows(run)]
    w0 = max(len(r[0]) for r in rows)
    w = [max(len(r[i]) for r in rows) for i in (1, 2, 3)]
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w[0]}}  {r[2]:>{w[1]}}  {r[3]:>{w[2]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    up, down = run.total_bytes
    lines.append(f"bytes sent over {len(run.metrics)} rounds: {_fmt_bytes(up)} up, {_fmt_bytes(down)} down")
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


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #1a7f37; } .down { color: #b42318; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.sample { margin: 1em 0 1.6em; } .sample table { width: 100%; table-layout: fixed; }
.completion { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, monospace; font-size: 0.9em; }
.rewards { color: #555; font-size: 0.85em; margin-top: 0.4em; }
.warn { background: #fff4e5; border: 1px solid #f0b45b; padding: 0.5em 0.8em; }
"""

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


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
    parts.append("<table><tr><th>objective</th><th>base</th><th>final</th><th>change</th></tr>")
    for i, (label, b, f, change) in enumerate(_table_rows(run)):
        is_reward = i < len(run.objectives)  # for KL, higher is neither good nor bad by itself
        cls = "" if not is_reward or change is None or round(change, 4) == 0 else "up" if change > 0 else "down"
        parts.append(
            f"<tr><td>{_esc(label)}</td><td class=num>{_fmt(b)}</td><td class=num>{_fmt(f)}</td>"
            f'<td class="{f"num {cls}" if cls else "num"}">{_fmt(change, signed=True)}</td></tr>'
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
    parts.append("<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts) + "</table>")

    if run.palette is not None:
        parts.extend(_palette_html(run))

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


# ---------------------------------------------------------------------------------------------
# Sweep comparison: every algorithm of a sweep directory (firm.sweep) on the same figures
#
# `write_comparison(sweep_dir)` reads sweep.json and the run directory of every point, and writes
# sweep_dir/plots/{front,hv_rounds,rewards,drift,reward_vs_bytes}.png and a self-contained
# sweep_dir/comparison.html; `comparison_table(sweep_dir)` is the plain-text table `firm compare`
# prints. Points that did not complete, whose run directory is missing or unreadable, or that have
# no final eval are left out of every figure and listed on the page. A field a run does not record
# (the references have no drift) shows as n/a.

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LABEL_OFFSETS = ((6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"))


@dataclass(frozen=True)
class SweepPoint:
    """One (algorithm, preference) point: its sweep.json entry and, when usable, its parsed run."""

    algorithm: str
    preference: tuple[float, ...]
    run_dir: str  # relative to the sweep directory
    record: dict[str, Any]  # the point's entry in sweep.json
    run: Run | None = None  # None when skipped
    final: tuple[float, ...] = ()  # [M] final eval reward per objective; () when skipped
    skipped: str | None = None  # why the point is left out of the figures


@dataclass(frozen=True)
class Sweep:
    """A sweep directory, parsed: sweep.json and the runs of its points."""

    path: Path
    data: dict[str, Any]  # sweep.json
    objectives: list[str]
    points: list[SweepPoint]  # in sweep.json order: per algorithm, objective 1's weight from high to low
    missing: list[str]  # run directories the sweep config expects that sweep.json does not list (yet)

    @property
    def algorithms(self) -> list[str]:
        order = [str(a) for a in _get(self.data, "key", "algorithms") or []]
        return order + [a for a in dict.fromkeys(p.algorithm for p in self.points) if a not in order]

    def usable(self, algorithm: str) -> list[SweepPoint]:
        return [p for p in self.points if p.algorithm == algorithm and p.skipped is None]

    def central(self, algorithm: str) -> SweepPoint | None:
        """The usable point whose preference is closest (Euclidean) to uniform; the first of ties."""
        m = len(self.objectives)
        return min(self.usable(algorithm), key=lambda p: sum((w - 1.0 / m) ** 2 for w in p.preference), default=None)


def _vector(evals: Any, names: list[str]) -> tuple[float, ...] | None:
    """[M] rewards in the order of names (spreads over clients -> mean); None unless all are finite."""
    if not isinstance(evals, dict):
        return None
    values = tuple(_num(evals.get(n)) for n in names)
    return values if values and all(math.isfinite(v) for v in values) else None


def _sweep_point(root: Path, record: dict[str, Any], names: list[str]) -> SweepPoint:
    algorithm, run_dir = record["algorithm"], record["run_dir"]
    try:
        preference = tuple(float(w) for w in record.get("preference") or ())
    except (TypeError, ValueError):
        preference = ()
    point = SweepPoint(algorithm, preference, run_dir, record)
    status = record.get("status")
    if status != "completed":
        error = _get(_read_json(root / run_dir / "summary.json"), "error")
        return dataclasses.replace(point, skipped=f"status {status}" + (f": {error}" if error else ""))
    try:
        run = load_run(root / run_dir)
    except (ReportError, OSError, UnicodeDecodeError) as err:
        return dataclasses.replace(point, skipped=str(err))
    final = _vector(record.get("final_eval") or run.final_eval, names)
    if final is None or len(preference) != len(names):
        return dataclasses.replace(point, skipped="no final eval on every objective" if final is None else "no preference")
    return dataclasses.replace(point, run=run, final=final)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_sweep(sweep_dir: Path | str) -> Sweep:
    """Parse a sweep directory; ReportError (one line, naming the file) if it is not one."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such sweep directory")
    sweep_path = path / "sweep.json"
    if not sweep_path.is_file():
        raise ReportError(f"{path}: no sweep.json, not a firm sweep directory (for one run, use `firm report`)")
    try:
        data = json.loads(sweep_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{sweep_path}: line {err.lineno} is not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ReportError(f"{sweep_path}: no list of points, not a firm sweep.json")
    records = data["points"]
    for i, record in enumerate(records, start=1):
        if not (isinstance(record, dict) and isinstance(record.get("algorithm"), str) and isinstance(record.get("run_dir"), str)):
            raise ReportError(f"{sweep_path}: point {i} has no algorithm or run_dir")
    names = data.get("objectives") or _get(data, "key", "config", "objectives", "names")
    if not names:  # an old or hand-made sweep.json: ask the first run
        names = next(
            (load_run(path / r["run_dir"]).objectives for r in records if (path / r["run_dir"] / "metrics.jsonl").is_file()), []
        )
    names = [str(n) for n in names]
    points = [_sweep_point(path, record, names) for record in records]
    missing: list[str] = []
    algorithms, divisions = _get(data, "key", "algorithms"), _get(data, "key", "divisions")
    if isinstance(algorithms, list) and isinstance(divisions, int) and divisions >= 1 and names:
        from firm.sweep import preference_grid

        listed = {p.run_dir for p in points}
        grid = preference_grid(len(names), divisions)
        missing = [f"{a}-p{i:02d}" for a in algorithms for i in range(len(grid)) if f"{a}-p{i:02d}" not in listed]
    return Sweep(path=path, data=data, objectives=names, points=points, missing=missing)


def _sweep_pareto(sweep: Sweep) -> tuple[dict[str, Any] | None, str]:
    """sweep.json's hypervolumes with their normalisation, or (sweep in progress) the same computed here."""
    pareto = sweep.data.get("pareto")
    if isinstance(pareto, dict) and isinstance(pareto.get("hypervolume"), dict):
        return pareto, "sweep.json"
    finals: dict[str, Any] = {a: [p.final for p in sweep.usable(a)] for a in sweep.algorithms if sweep.usable(a)}
    if not finals:
        return None, "no completed points"
    return hypervolume_report(finals), "computed here from the completed points: sweep.json has none yet"


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
    """algorithm -> round -> hypervolume of its points' evals at that round, under ONE min-max
    normalisation over every point's eval at every round, all algorithms. A round counts for an
    algorithm only if every one of its points was evaluated then (fewer points would lower the HV)."""
    series = {a: [_evals_by_round(p.run, sweep.objectives) for p in sweep.usable(a) if p.run] for a in sweep.algorithms}
    every = [v for per_point in series.values() for evals in per_point for v in evals.values()]
    if not every:
        return {}, None
    normalization = Normalization.from_points(every)
    out: dict[str, dict[int, float]] = {}
    for algorithm, per_point in series.items():
        if per_point:
            rounds = sorted(set.intersection(*(set(evals) for evals in per_point)))
            out[algorithm] = {r: hypervolume([evals[r] for evals in per_point], normalization) for r in rounds}
    return out, normalization


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
            lower, upper, reference = (pareto["normalization"]["lower"], pareto["normalization"]["upper"], pareto["reference"])
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
    ax.set_title("Hypervolume per round\n(one normalisation over all algorithms and rounds)", fontsize="medium")
    ax.set_ylabel("hypervolume of the sweep's points\n(normalised, in [0, 1])")
    _round_axis(ax, sorted({r for series in hv.values() for r in series}))
    ax.set_ylim(0, min(_top(values), 1.1))
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
        "Hypervolume: of all the algorithm's final points, normalised together with every other algorithm's "
        f"({_esc(source)}). Wall time: summed over the algorithm's completed points. Points: used / expected.</p>"
    )

    parts.append("<h2>Hypervolume normalisation</h2>")
    if pareto:
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
