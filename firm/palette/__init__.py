"""MAP value targets ("palette") for FIRM: solve, federated statistics, reference sampling, plots.

`firm.palette.dual` is the math (numpy/scipy only); `federated` the client/server split of its
statistics; `sampling` draws reward samples from the reference model and runs best-of-n decoding;
`plots` draws the palette and the M = 2 feasible region. See docs/palette.md.
"""

from firm.palette.dual import (
    PaletteInfeasible,
    PaletteSolution,
    PaletteSolveError,
    RewardOracle,
    Samples,
    Target,
    TiltStats,
    feasible_by_lp,
    merge_stats,
    parse_targets,
    solve_palette,
    tilt_stats,
)
from firm.palette.federated import Federation

__all__ = [
    "Federation",
    "PaletteInfeasible",
    "PaletteSolution",
    "PaletteSolveError",
    "RewardOracle",
    "Samples",
    "Target",
    "TiltStats",
    "feasible_by_lp",
    "merge_stats",
    "parse_targets",
    "solve_palette",
    "tilt_stats",
]
