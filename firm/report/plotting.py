"""What the run report and the sweep comparison draw and write with: figures, round axes, legends,
a series of plain values or spreads over clients, PNG bytes, number formats, and the pages' HTML
escaping and style sheet.

This module and firm.palette.plots are the only ones that import matplotlib (firm.report.run and
firm.report.compare_plots name its types in annotations only). Both use the object-oriented API with
the Agg canvas (never pyplot), so they need no display and leave the caller's matplotlib backend alone.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from firm.report.load import _band, _num

DPI = 100
WIDTH, HEIGHT = 6.4, 3.8  # inches: 640 x 380 px at DPI


# ---------------------------------------------------------------------------------------------
# Figures


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


def _byte_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def _top(values: list[float]) -> float:
    """An upper y limit leaving room above the largest finite value (markers are not clipped)."""
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0) * 1.12 or 1.0


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Text


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


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
