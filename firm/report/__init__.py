"""Reports: plots and one self-contained HTML page from a run directory or a sweep directory (docs/design.md sections 6-7).

`write_plots(run_dir)` draws the per-round metrics of `metrics.jsonl` (fields in the README) into
`run_dir/plots/*.png`; `write_report(run_dir)` also writes `run_dir/report.html`, a single file with
the PNGs embedded as base64 data URIs so it can be mailed on its own; `report_table(run_dir)` is the
short plain-text table `firm train` prints at the end. `firm report RUN_DIR` runs the first two and
prints the third. Reading needs only the files, so a report can be made while a run is still going
(rounds so far) or after it failed.

`write_comparison(sweep_dir)` and `comparison_table(sweep_dir)` do the same for a sweep directory
(firm.sweep: sweep.json plus one run directory per point): every arm on the same figures, each
figure the mean over seeds with its 95 % t interval, hypervolumes from sweep.json (firm.sweep,
firm.pareto). `firm compare SWEEP_DIR` runs both.

    load.py           the inputs, parsed: a run directory (Run, load_run), a sweep directory (Sweep, load_sweep)
    plotting.py       figure, axis, legend and PNG helpers, number formats and the pages' style, used by both
    run.py            the run report: per-run plots, report_table, report.html with its palette section
    seeds.py          a sweep's figures over seeds: Estimate (mean, 95 % t interval, n), mean fronts, per-round series
    compare_plots.py  the comparison's figures: fronts, hypervolume per round, the central point's rounds
    compare.py        the comparison: comparison_table, comparison.html
"""

from __future__ import annotations

from firm.report.compare import COMPARISON_CAPTIONS, comparison_table, write_comparison
from firm.report.compare_plots import COMPARISON_PLOTS
from firm.report.load import ReportError, Run, Sweep, SweepPoint, load_run, load_sweep
from firm.report.run import CAPTIONS, PLOTS, palette_rows, report_table, write_plots, write_report

__all__ = [
    "CAPTIONS",
    "COMPARISON_CAPTIONS",
    "COMPARISON_PLOTS",
    "PLOTS",
    "ReportError",
    "Run",
    "Sweep",
    "SweepPoint",
    "comparison_table",
    "load_run",
    "load_sweep",
    "palette_rows",
    "report_table",
    "write_comparison",
    "write_plots",
    "write_report",
]
