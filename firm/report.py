"""Run reports: plots and one self-contained HTML page from a run directory (DESIGN.md sections 5-6).

`write_plots(run_dir)` draws the per-round metrics of `metrics.jsonl` (fields in the README) into
`run_dir/plots/*.png`; `write_report(run_dir)` also writes `run_dir/report.html`, a single file with
the PNGs embedded as base64 data URIs so it can be mailed on its own; `report_table(run_dir)` is the
short plain-text table `firm train` prints at the end. `firm report RUN_DIR` runs the first two and
prints the third. Reading needs only the files, so a report can be made while a run is still going
(rounds so far) or after it failed.

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

This is the only module that imports matplotlib. It uses the object-oriented API with the Agg canvas
(never pyplot), so it needs no display and leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from firm.rundir import make_public

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
    config_path = path / "config.toml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    samples_path = path / "samples.jsonl"
    samples = _read_jsonl(samples_path) if samples_path.is_file() else []
    return Run(path=path, metrics=metrics, summary=summary, config_text=config_text, samples=samples)


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
        ax.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)
    ax.grid(alpha=0.3)


def _legend(ax: Axes, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _plot_series(ax: Axes, raw: list[tuple[int, Any]], color: str, label: str | None = None) -> bool:
    """Plot (round, value) points, values plain or spreads over clients (mean line, min-max band); False if none."""
    points = [(x, _num(v)) for x, v in raw if not math.isnan(_num(v))]
    if not points:
        return False
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", color=color, label=label)
    bands = [(x, *b) for x, v in raw if (b := _band(v)) is not None]
    if bands:
        bx, lo, hi = zip(*bands, strict=True)
        ax.fill_between(bx, lo, hi, color=color, alpha=0.2, lw=0)
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
    title = "Held-out eval reward of the global adapter"
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
    band = "; band: min–max over clients" if _has_bands(run.metrics, "kl") else ""
    ax.set_title(f"KL of the global adapter to the reference (held-out prompts{band})")
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


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        make_public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render(run: Run) -> dict[str, bytes]:
    """name -> PNG bytes, one per entry of PLOTS, written to run_dir/plots/<name>.png."""
    out_dir = run.path / "plots"
    out_dir.mkdir(exist_ok=True)
    pngs = {}
    for name, plot in PLOTS.items():
        buf = io.BytesIO()
        plot(run).savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        pngs[name] = buf.getvalue()
        _write_atomic(out_dir / f"{name}.png", pngs[name])
    return pngs


def write_plots(run_dir: Path | str) -> list[Path]:
    """Draw every plot of the run into run_dir/plots/ and return the PNG paths."""
    run = load_run(run_dir)
    _render(run)
    return [run.path / "plots" / f"{name}.png" for name in PLOTS]


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
    algorithm = s.get("algorithm", "?")
    model = s.get("model", "?")
    pref = ", ".join(f"{x:g}" for x in run.preference)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(f'firm report: {run.path.name}')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_esc(algorithm)} on {_esc(model)}</h1>",
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
            f'<td class="num {cls}">{_fmt(change, signed=True)}</td></tr>'
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


def write_report(run_dir: Path | str) -> Path:
    """Write run_dir/plots/*.png and a self-contained run_dir/report.html; return the HTML path."""
    run = load_run(run_dir)
    pngs = _render(run)
    path = run.path / "report.html"
    _write_atomic(path, _html(run, pngs).encode("utf-8"))
    return path
