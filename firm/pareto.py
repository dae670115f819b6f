"""Pareto fronts and the hypervolume of reward vectors, for MAXIMISATION (docs/design.md section 6).

The hypervolume (HV) of a set of points P in [0, 1]^M with reference point r is the Lebesgue
measure of the region they dominate:

    HV(P, r) = vol( union_{p in P} [r_1, p_1] x ... x [r_M, p_M] )

Rewards live on arbitrary, different scales, so points are first mapped to [0, 1]^M by a
`Normalization` (per objective, x -> (x - lower) / (upper - lower), clipped), and the reference
defaults to the worst corner, r = 0. HV then lies in [0, 1], and 1 means one point reached the
upper bound on every objective.

Fixed reference (`improvement_hypervolume`, what sweeps use): the reference is the base model's
held-out rewards and each objective has a fixed scale, so HV is the volume of improvement over
the starting policy and does not depend on which algorithms are compared. The normalised HV
below remains for data without a base point.

A hypervolume is comparable only with another one computed under the SAME normalisation: the
default bounds are the min and max over the points given, so normalising each algorithm's points
on their own would give each its own unit. `hypervolume_report` therefore normalises the points of
all algorithms together and writes the bounds and the reference next to the numbers;
`hypervolume_by_round` likewise normalises every point of every algorithm at every round together.
For the same reason, under min-max bounds adding a point can move a bound and change the HV of the
others; monotonicity and "dominated points change nothing" hold for a fixed normalisation.

Over seeds (`seeded_pareto`): each seed's points get their own `pareto_summary` against that
seed's base model, and each arm's hypervolumes over the seeds are summarised by `mean_interval`
(firm.intervals: the mean and its Student-t interval, n - 1 degrees of freedom), the function every
across-seed figure of a comparison uses.

moocore computes the exact HV (`moocore.hypervolume`, maximise=True) and the non-dominated mask
(`moocore.is_nondominated`, maximise=True, keep_weakly=True); this module only validates inputs,
normalises and serialises.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import moocore
import numpy as np
import numpy.typing as npt

from firm.intervals import interval_record

Array = npt.NDArray[np.float64]


def _as_points(points: npt.ArrayLike, name: str = "points", num_objectives: int | None = None) -> Array:
    """Validated float copy of points  # [N, M]; ValueError naming the problem otherwise."""
    arr = np.array(points, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, M] (one row per point), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one objective (column), got shape {arr.shape}")
    if num_objectives is not None and arr.shape[1] != num_objectives:
        raise ValueError(f"{name} has {arr.shape[1]} objectives (columns), expected {num_objectives}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} must be finite; NaN or inf in rows {np.flatnonzero(bad).tolist()}")
    return arr


def _as_vector(values: npt.ArrayLike, name: str, num_objectives: int) -> Array:
    """Validated float vector  # [M]; a scalar is broadcast to all M objectives."""
    arr = np.array(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(num_objectives, float(arr))
    if arr.shape != (num_objectives,):
        raise ValueError(f"{name} must be a scalar or have shape ({num_objectives},), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def non_dominated(points: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Mask [N] of the rows of points  # [N, M] that no other row dominates, for maximisation.

    q dominates p when q >= p on every objective and q > p on at least one, so a point that only
    ties the best on one objective and is worse on another is dominated. Exact duplicates do not
    dominate each other: every copy of a non-dominated point is True (moocore's keep_weakly=True;
    its default would keep only the first copy), every copy of a dominated point False.
    """
    arr = _as_points(points)
    return np.asarray(moocore.is_nondominated(arr, maximise=True, keep_weakly=True), dtype=bool)


@dataclass(frozen=True)
class Normalization:
    """Per-objective affine map of rewards onto [0, 1]: x -> clip((x - lower) / (upper - lower), 0, 1).

    Build it with `from_points`. An objective with upper == lower (all points tie on it) maps to
    1.0, not 0.0: a tie carries no ranking information, and 0.0 would put every point on the
    reference plane and zero the hypervolume of all of them.
    """

    lower: tuple[float, ...]
    """[M] reward mapped to 0 (the worst corner); values below it are clipped to 0."""
    upper: tuple[float, ...]
    """[M] reward mapped to 1; values above it are clipped to 1."""
    method: str = "fixed"
    """Where the bounds came from: "min-max" (over the points), "fixed", or a mix per bound."""

    def __post_init__(self) -> None:
        lower, upper = np.asarray(self.lower, dtype=np.float64), np.asarray(self.upper, dtype=np.float64)
        if lower.ndim != 1 or lower.shape != upper.shape or lower.size == 0:
            raise ValueError(f"lower and upper must both have shape (M,) with M >= 1, got {lower.shape} and {upper.shape}")
        if not (np.isfinite(lower).all() and np.isfinite(upper).all()):
            raise ValueError(f"normalisation bounds must be finite, got lower={self.lower} upper={self.upper}")
        if (lower > upper).any():
            raise ValueError(f"normalisation needs lower <= upper on every objective, got lower={self.lower} upper={self.upper}")

    @property
    def num_objectives(self) -> int:
        return len(self.lower)

    @classmethod
    def from_points(
        cls, points: npt.ArrayLike, lower: npt.ArrayLike | None = None, upper: npt.ArrayLike | None = None
    ) -> Normalization:
        """Bounds for points  # [N, M]: a bound left as None is the per-objective min (lower) or max
        (upper) over the points; a given bound (scalar or [M]) is used as is, e.g. lower=0, upper=1
        for rewards already in [0, 1], which makes hypervolumes comparable across figures too."""
        arr = _as_points(points)
        m = arr.shape[1]
        if arr.shape[0] == 0 and (lower is None or upper is None):
            raise ValueError("cannot take min-max bounds over zero points; pass lower and upper")
        lo = arr.min(axis=0) if lower is None else _as_vector(lower, "lower", m)
        hi = arr.max(axis=0) if upper is None else _as_vector(upper, "upper", m)
        if lower is None and upper is None:
            method = "min-max"
        elif lower is not None and upper is not None:
            method = "fixed"
        else:
            method = "fixed lower, max upper" if upper is None else "min lower, fixed upper"
        return cls(tuple(lo.tolist()), tuple(hi.tolist()), method)

    def normalize(self, points: npt.ArrayLike) -> Array:
        """points  # [N, M] -> normalised points  # [N, M] in [0, 1]."""
        arr = _as_points(points, num_objectives=self.num_objectives)
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        span = upper - lower
        degenerate = span == 0
        out = (arr - lower) / np.where(degenerate, 1.0, span)
        out[:, degenerate] = 1.0
        return np.clip(out, 0.0, 1.0)


def hypervolume(points: npt.ArrayLike, normalization: Normalization, reference: npt.ArrayLike | None = None) -> float:
    """Exact hypervolume of points  # [N, M] (rewards, maximised) after `normalization`.

    reference  # [M] is in normalised units and defaults to 0, the worst corner, so the result lies
    in [0, 1]; a negative reference also credits points at the lower bound. Points that do not beat
    the reference on every objective add nothing; zero points give 0.0.
    """
    normed = normalization.normalize(points)
    m = normalization.num_objectives
    ref = np.zeros(m) if reference is None else _as_vector(reference, "reference", m)
    hv = float(moocore.hypervolume(normed, ref=ref, maximise=True))
    # Normalised points lie in [0, 1], so HV cannot exceed the box [ref, 1]; moocore's 5-D+ algorithms
    # can overshoot it by rounding (1.0000000000000004 for a point at the corner), which we remove.
    return min(hv, float(np.prod(np.maximum(1.0 - ref, 0.0))))


def improvement_hypervolume(points: npt.ArrayLike, reference: npt.ArrayLike, scales: npt.ArrayLike = 1.0) -> float:
    """Hypervolume of the improvement of points  # [N, M] over a FIXED reference  # [M], in fixed units.

        HV_r(P) = vol( union_{p in P} [0, (p_1 - r_1) / s_1] x ... x [0, (p_M - r_M) / s_M] )

    With r the base model's held-out rewards, this is the volume of improvement over the starting
    policy; s (scalar or [M], e.g. 1 for rewards in [0, 1]) is fixed per task. Neither depends on
    which points or algorithms are compared, so an algorithm's HV is the same alone and beside
    others, and adding a point never lowers another's. A point that does not improve on every
    objective adds nothing.
    """
    m = len(np.atleast_1d(np.asarray(reference, dtype=np.float64)))
    ref = _as_vector(reference, "reference", m)
    scale = _as_vector(scales, "scales", m)
    if (scale <= 0).any():
        raise ValueError(f"scales must be > 0, got {scale.tolist()}")
    if np.size(points) == 0:
        return 0.0
    arr = _as_points(points, num_objectives=m)
    gains = (arr - ref) / scale
    return float(moocore.hypervolume(gains, ref=np.zeros(m), maximise=True))


def hypervolume_report(
    points_by_name: Mapping[str, npt.ArrayLike], lower: npt.ArrayLike | None = None, upper: npt.ArrayLike | None = None
) -> dict[str, Any]:
    """Hypervolume per name (algorithm) under ONE normalisation of all their points together.

    points_by_name[name]  # [N_name, M]. lower / upper are passed to `Normalization.from_points`
    over the concatenation of all points. Returns a JSON-ready dict, written next to every figure:

        {"normalization": {"lower": [M floats], "upper": [M floats], "method": str},
         "reference": [M floats, normalised units],
         "hypervolume": {name: float},
         "front": {name: [row indices into points_by_name[name] of its own non-dominated points]}}
    """
    if not points_by_name:
        raise ValueError("points_by_name is empty; need at least one set of points")
    arrays = {name: _as_points(p, name=f"points_by_name[{name!r}]") for name, p in points_by_name.items()}
    widths = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"every set of points needs the same number of objectives, got {widths}")
    normalization = Normalization.from_points(np.concatenate(list(arrays.values())), lower, upper)
    reference = np.zeros(normalization.num_objectives)
    return {
        "normalization": {
            "lower": list(normalization.lower),
            "upper": list(normalization.upper),
            "method": f"{normalization.method} bounds, one normalisation for all sets: x -> clip((x - lower) / (upper - lower), 0, 1), "
            "an objective with upper == lower -> 1.0; rewards maximised",
        },
        "reference": reference.tolist(),
        "hypervolume": {name: hypervolume(a, normalization, reference) for name, a in arrays.items()},
        "front": {name: np.flatnonzero(non_dominated(a)).tolist() for name, a in arrays.items()},
    }


def hypervolume_by_round(
    evals_by_name: Mapping[str, Sequence[Mapping[int, Sequence[float]]]],
    base: Sequence[float] | None = None,
    scales: float | Sequence[float] = 1.0,
) -> tuple[dict[str, dict[int, float]], Normalization | None]:
    """Hypervolume per name (algorithm) and round under ONE min-max normalisation over every vector
    of every point at every round, all names together (so the rounds and the names share one unit).

    evals_by_name[name][k][round]  # [M]: point k's rewards at that round. A round counts for a name
    only if every one of its points has a vector then (fewer points would lower the HV); a name with
    no points is left out. Returns ({name: {round: HV}}, the normalisation), or ({}, None) without
    any vector. With `base`, `improvement_hypervolume` over it instead, and no normalisation (None).
    """
    every = [v for per_point in evals_by_name.values() for evals in per_point for v in evals.values()]
    if not every:
        return {}, None
    if base is not None:  # fixed reference: each name's HV by round on its own (normalisation None)
        fixed: dict[str, dict[int, float]] = {}
        for name, per_point in evals_by_name.items():
            if per_point:
                rounds = sorted(set.intersection(*(set(evals) for evals in per_point)))
                fixed[name] = {r: improvement_hypervolume([evals[r] for evals in per_point], base, scales) for r in rounds}
        return fixed, None
    normalization = Normalization.from_points(every)
    out: dict[str, dict[int, float]] = {}
    for name, per_point in evals_by_name.items():
        if per_point:
            rounds = sorted(set.intersection(*(set(evals) for evals in per_point)))
            out[name] = {r: hypervolume([evals[r] for evals in per_point], normalization) for r in rounds}
    return out, normalization


def preference_grid(num_objectives: int, divisions: int) -> list[tuple[float, ...]]:
    """Evenly spaced points of the simplex: every k / divisions with non-negative integers k summing to divisions."""
    if num_objectives < 1 or divisions < 1:
        raise ValueError(f"need num_objectives >= 1 and divisions >= 1, got {num_objectives}, {divisions}")
    points = [
        tuple(k / divisions for k in combo)
        for combo in itertools.product(range(divisions + 1), repeat=num_objectives)
        if sum(combo) == divisions
    ]
    return sorted(points, reverse=True)  # objective 1's weight from high to low


def pareto_summary(
    finals: Mapping[str, Sequence[Sequence[float]]], base: Sequence[float] | None = None, scales: float | Sequence[float] = 1.0
) -> dict[str, Any] | None:
    """Hypervolume per algorithm of its final eval vectors finals[algorithm]  # [N, M]: sweep.json's
    "pareto", and what `firm compare` shows for a sweep that has not written it yet. An algorithm
    without vectors is left out; None when none has any.

    With `base` (the base model's held-out rewards [M], the same for every algorithm of the sweep)
    the hypervolume is `improvement_hypervolume` over base in units of `scales`: fixed, the same for
    an algorithm alone or beside others ("hypervolume"), written with the reference and the scales.
    Without it (a sweep of an older firm), all algorithms normalised together (`hypervolume_report`).
    """
    nonempty = {a: vectors for a, vectors in finals.items() if vectors}
    if not nonempty:
        return None
    if base is None:
        return hypervolume_report(nonempty)
    m = len(base)
    scale = _as_vector(scales, "scales", m)
    return {
        "reference": list(map(float, base)),
        "scales": scale.tolist(),
        "method": "improvement over the base model's held-out rewards: HV of (reward - reference) / scales over the "
        "points that improve on every objective; fixed, independent of the algorithms compared",
        "hypervolume": {a: improvement_hypervolume(v, base, scale) for a, v in nonempty.items()},
        "front": {a: np.flatnonzero(non_dominated(v)).tolist() for a, v in nonempty.items()},
    }


BASE_TOLERANCE = 1e-6
"""How far (reward units, per objective) two runs' evaluations of the same base model on the same prompts
and sampling seeds may differ and still be one reference: float32 on different CPUs (a sweep resumed on
another machine) differs in the 8th digit, held-out standard errors are about 1e-2."""


def common_base(initial_evals: Sequence[Mapping[str, float] | None], names: Sequence[str]) -> list[float] | None:
    """The base model's held-out rewards [M] shared by a sweep's points at one seed (one held-out set:
    every run evaluates the same base model on the same prompts and seeds): their mean when they agree
    within `BASE_TOLERANCE`, or None if some point has none or they differ by more."""
    vectors = [[float(e[n]) for n in names] for e in initial_evals if e]
    if not vectors or len(vectors) != len(initial_evals):
        return None
    arr = np.asarray(vectors, dtype=np.float64)
    spread = arr.max(axis=0) - arr.min(axis=0)
    if float(spread.max()) > BASE_TOLERANCE:
        return None
    return [float(v) for v in np.where(spread == 0, arr[0], arr.mean(axis=0))]  # exact where they agree exactly


def seeded_pareto(
    finals: Mapping[str, Mapping[Any, Sequence[Sequence[float]]]],
    bases: Mapping[Any, Sequence[float] | None],
    scales: float | Sequence[float] = 1.0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """sweep.json's "pareto" for a sweep over seeds: `pareto_summary` per seed, then per arm the mean
    and `mean_interval` of its hypervolumes over the seeds.

    finals[arm][seed]  # [N, M]: the arm's final eval vectors at that seed (one per preference; a
    single one for an arm that ignores the preference); bases[seed]  # [M]: that seed's base model
    rewards, the hypervolume reference. A seed whose base is None is left out of the hypervolumes when
    another seed has one (its seed is listed in "unreferenced_seeds": the two units never mix); when no
    seed has a base (an older sweep), each seed falls back to one normalisation of its points. Seeds are
    kept in the order first given. Returns None when no seed has a vector, else

        {"hypervolume": {arm: mean over seeds}, "interval": {arm: interval_record},
         "by_seed": {"<seed>": pareto_summary of that seed's points},
         "reference" with "scales" and "method" (or with "normalization"), as in pareto_summary: when
         every seed shares them (one base model: a real model's base does not depend on the seed),
         "front": the one seed's, when there is one seed}

    "hypervolume" keeps the shape of a one-seed sweep's (one float per arm), so a reader of those still works.
    """
    seeds = list(dict.fromkeys(s for per_seed in finals.values() for s, vectors in per_seed.items() if len(vectors)))
    unreferenced = [s for s in seeds if bases.get(s) is None]
    if len(unreferenced) < len(seeds):  # never mix units: a seed without a base is left out, and said so
        seeds = [s for s in seeds if s not in unreferenced]
    else:
        unreferenced = []
    by_seed: dict[str, dict[str, Any]] = {}
    for s in seeds:
        summary = pareto_summary({a: per_seed.get(s, []) for a, per_seed in finals.items()}, bases.get(s), scales)
        if summary is not None:
            by_seed[str(s)] = summary
    if not by_seed:
        return None
    per_arm = {a: [hv[a] for summary in by_seed.values() if a in (hv := summary["hypervolume"])] for a in finals}
    intervals = {a: interval_record(values, level) for a, values in per_arm.items() if values}
    out: dict[str, Any] = {
        "hypervolume": {a: record["mean"] for a, record in intervals.items()},
        "interval": intervals,
        "by_seed": by_seed,
    }
    summaries = list(by_seed.values())
    keys = ("reference", "scales", "method") if "scales" in summaries[0] else ("reference", "normalization")
    if all(summary.get(k) == summaries[0][k] for summary in summaries for k in keys):  # one reference for all seeds
        out.update({k: summaries[0][k] for k in keys})
    if len(summaries) == 1:
        out["front"] = summaries[0]["front"]
    if unreferenced:
        out["unreferenced_seeds"] = [str(s) for s in unreferenced]
    return out
