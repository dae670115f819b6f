"""What `firm palette` shows and leaves behind: its tables as text, and palette.json with its figures.

The tables are returned as strings (the CLI prints them); `write_palette` writes palette.json and
the PNGs of `firm.palette.plots` into the output directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firm.config import Config
from firm.palette.dual import PaletteSolution
from firm.palette.federated import Federation

if TYPE_CHECKING:
    from firm.palette.sampling import DecodingResult  # torch; only a type here


def _target(value: float) -> str:
    """A target cell, `-` for a value without one (target -inf)."""
    return f"{value:10.4f}" if value > float("-inf") else f"{'-':>10s}"


def solution_table(solution: PaletteSolution, federation: Federation, record: Mapping[str, Any], config: Config) -> str:
    """What the solve cost, per value target / reference / predicted / lambda / preference, and the verdict.

    `federation` counts its rounds after `palette_record` (whose region costs rounds too).
    """
    pal = config.palette
    names = solution.names
    lines = [
        f"palette on {record['clients']} clients, {solution.num_samples:g} reference samples "
        f"({pal.prompts_per_client or 'all'} prompts x {pal.samples_per_prompt} per client); "
        f"{federation.rounds} rounds of statistics, {federation.upload_bytes:,} bytes uploaded",
        f"{'value':<16s}{'target':>10s}{'reference':>11s}{'predicted':>11s}{'lambda':>11s}{'preference':>12s}",
    ]
    usable = solution.feasible and not solution.met_by_reference  # else there is no preference to train with
    for m, name in enumerate(names):
        pref = f"{solution.preference[m]:12.3f}" if usable else f"{'-':>12s}"
        lines.append(
            f"{name:<16s}{_target(solution.targets[m])}{solution.reference_mean[m]:11.4f}"
            f"{solution.predicted[m]:11.4f}{solution.lam[m]:11.4g}{pref}"
        )
    lines.append(f"feasible: {'yes' if solution.feasible else 'NO'}: {solution.reason}")
    if usable and pal.weights == "standardized":
        shown = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, solution.standardized_preference, strict=True))
        lines.append(f"palette.weights=standardized: training would use the preference {shown}")
    if solution.feasible:
        lines.append(f"KL(tilted || reference) = {solution.kl:.4f} nats; train with: firm train palette.targets={pal.targets!r}")
    return "\n".join(lines)


def decoding_table(solution: PaletteSolution, result: DecodingResult) -> str:
    """Best-of-n on the held-out prompts, per value: target, reference, best-of-n and tilted resampling means."""
    lines = [
        f"decoding {result.num_prompts} held-out prompts x {result.n} reference samples:",
        f"{'value':<16s}{'target':>10s}{'reference':>11s}{'best-of-n':>11s}{'tilted':>11s}",
    ]
    for m, name in enumerate(solution.names):
        lines.append(
            f"{name:<16s}{_target(solution.targets[m])}{result.reference[m]:11.4f}"
            f"{result.best_of_n[m]:11.4f}{result.tilted[m]:11.4f}"
        )
    return "\n".join(lines)


def write_palette(out_dir: Path, record: Mapping[str, Any], decoding: Mapping[str, Any] | None = None) -> list[Path]:
    """palette.json, palette.png and (with a region in the record) palette_region.png; returns their paths."""
    from firm.palette.plots import plot_palette, plot_region  # matplotlib only where figures are drawn
    from firm.rundir import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "palette.json", json.dumps(record, indent=2) + "\n")
    figures = {"palette": plot_palette(record, decoding=decoding)}
    if "region" in record:
        figures["palette_region"] = plot_region(record["region"], record)
    for name, fig in figures.items():
        fig.savefig(out_dir / f"{name}.png", dpi=100, metadata={"Software": None})
    return [out_dir / "palette.json", *(out_dir / f"{name}.png" for name in figures)]
