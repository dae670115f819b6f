"""MAP value targets ("palette") for FIRM: solve, federated statistics, reference sampling, plots.

`firm.palette.dual` is the math (numpy/scipy only); `federated` the client/server split of its
statistics; `sampling` draws reward samples from the reference model and runs best-of-n decoding;
`plots` draws the palette and the M = 2 feasible region; `output` formats `firm palette`'s tables
and writes palette.json with its figures. See docs/palette.md.
"""

from firm.config import REFERENCES, Config, ConfigError
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
    solve_palette,
    tilt_stats,
)
from firm.palette.federated import Federation
from firm.palette.targets import parse_targets

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
    "validate_config",
]


def validate_config(config: Config) -> None:
    """The palette.* checks: sizes, and targets that parse against the objectives (not for the references)."""
    pal = config.palette
    if pal.prompts_per_client < 0:
        raise ConfigError(f"palette.prompts_per_client: must be >= 0 (0 = all), got {pal.prompts_per_client}")
    if pal.samples_per_prompt < 1:
        raise ConfigError(f"palette.samples_per_prompt: must be >= 1, got {pal.samples_per_prompt}")
    if not pal.targets:
        return
    try:
        parse_targets(pal.targets, config.objectives.names)
    except ValueError as err:
        raise ConfigError(f"palette.targets: {err}") from None
    if config.algorithm.name in REFERENCES:
        raise ConfigError(f"palette.targets: not supported for the reference {config.algorithm.name!r}")
