"""A sweep's figures over its seeds: per arm, the mean over the seeds and the 95 % Student-t interval
(firm.intervals.mean_interval, n - 1 degrees of freedom), as the comparison's table and plots show them.

    Estimate       one figure over seeds: mean, interval, n; "0.5123 ± 0.0210" (one seed: the value alone)
    seed_bases     each seed's base model rewards, the hypervolume reference of that seed's points
    sweep_pareto   sweep.json's "pareto", or the same computed from the usable points of a sweep in progress
    front_points   an arm's mean final eval point per preference (one point for an arm that ignores p)
    over_seeds     a per-round figure's Estimate round by round

Each seed is one sample of the training: the held-out prompts, the partition and the evaluation's
sampling seeds are the same for all of them (firm.sweep, paired evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from firm.intervals import mean_interval
from firm.pareto import common_base, seeded_pareto
from firm.report.load import Sweep, SweepPoint

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A figure over seeds: the mean and its 95 % t interval [low, high] (nan for n < 2), n seeds."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Estimate:
        """Over the finite values (a seed without the figure is left out, and n says so)."""
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        return cls(*mean_interval(finite, LEVEL))

    @classmethod
    def from_record(cls, record: Any) -> Estimate:
        """From firm.intervals.interval_record's JSON (a bare number: one seed of an older sweep.json)."""
        if isinstance(record, int | float):
            return cls(float(record), math.nan, math.nan, 1)
        if not isinstance(record, dict) or record.get("mean") is None:
            return cls(math.nan, math.nan, math.nan, 0)

        def num(key: str) -> float:
            return math.nan if record.get(key) is None else float(record[key])

        return cls(num("mean"), num("low"), num("high"), int(record.get("n", 1)))

    @property
    def half(self) -> float:
        """Half-width of the interval (nan without one)."""
        return (self.high - self.low) / 2.0 if self.n > 1 else math.nan

    def text(self, fmt: str = "{:.4f}") -> str:
        """`mean ± half-width`; one seed: the value alone; none: n/a."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        if not math.isfinite(self.half):
            return fmt.format(self.mean)
        return f"{fmt.format(self.mean)} ± {fmt.format(self.half)}"

    def band(self) -> float | dict[str, float]:
        """What firm.report.plotting._plot_series draws: a mean line with the interval as a band (the value alone for n = 1)."""
        if math.isfinite(self.half):
            return {"mean": self.mean, "min": self.low, "max": self.high}
        return self.mean


def seed_bases(sweep: Sweep) -> dict[int | None, list[float] | None]:
    """seed -> the base model's held-out rewards shared by that seed's usable points (firm.pareto.common_base), or None."""
    out: dict[int | None, list[float] | None] = {}
    for seed in sweep.seeds:
        points = [p for label in sweep.arms for p in sweep.usable(label, seed)]
        if points:
            out[seed] = common_base([p.run.summary.get("initial_eval") if p.run else None for p in points], sweep.objectives)
    return out


def sweep_pareto(sweep: Sweep) -> tuple[dict[str, Any] | None, str]:
    """sweep.json's hypervolumes with their reference, or (sweep in progress) the same computed here by the
    function that writes them into sweep.json (firm.pareto.seeded_pareto), over the usable points."""
    pareto = sweep.data.get("pareto")
    if isinstance(pareto, dict) and isinstance(pareto.get("hypervolume"), dict):
        return pareto, "sweep.json"
    computed = runs_pareto(sweep)
    if computed is None:
        return None, "no completed points"
    return computed, "computed here from the completed points: sweep.json has none yet"


def runs_pareto(sweep: Sweep) -> dict[str, Any] | None:
    """The hypervolumes over seeds computed from the usable points' runs now (firm.pareto.seeded_pareto), by
    this firm, whatever firm wrote sweep.json; None when no point is usable."""
    finals = {label: {s: [p.final for p in sweep.usable(label, s)] for s in sweep.seeds} for label in sweep.arms}
    return seeded_pareto(finals, seed_bases(sweep), level=LEVEL)


def hypervolume_estimate(pareto: Mapping[str, Any] | None, label: str) -> Estimate:
    """The arm's hypervolume over seeds from a "pareto" record (an older sweep.json's: one seed)."""
    if not pareto:
        return Estimate(math.nan, math.nan, math.nan, 0)
    interval = (pareto.get("interval") or {}).get(label)
    return Estimate.from_record(interval if interval is not None else (pareto.get("hypervolume") or {}).get(label))


@dataclass(frozen=True)
class FrontPoint:
    """An arm's final eval at one preference, over its seeds."""

    preference: tuple[float, ...] | None  # None: the arm ignores p (one point)
    rewards: tuple[Estimate, ...]  # [M] per objective
    points: tuple[SweepPoint, ...]  # one per seed


def front_points(sweep: Sweep, label: str) -> list[FrontPoint]:
    """The arm's mean point per preference, objective 1's weight from high to low (the sweep's grid order)."""
    groups: dict[tuple[float, ...] | None, list[SweepPoint]] = {}
    agnostic = not sweep.uses_preference(label)
    for p in sweep.usable(label):
        groups.setdefault(None if agnostic else tuple(round(w, 9) for w in p.preference), []).append(p)
    keys = sorted(groups, key=lambda k: () if k is None else k, reverse=True)
    m = len(sweep.objectives)
    return [FrontPoint(k, tuple(Estimate.of(p.final[j] for p in groups[k]) for j in range(m)), tuple(groups[k])) for k in keys]


def over_seeds(per_seed: Iterable[Mapping[int, float]]) -> dict[int, Estimate]:
    """round -> Estimate over the seeds whose series has that round (its n may be smaller than the seeds')."""
    series = list(per_seed)
    rounds = sorted({r for s in series for r in s})
    return {r: Estimate.of(s.get(r) for s in series) for r in rounds}
