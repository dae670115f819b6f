"""FIRM's claims as statistics over seeds, and the verdict each interval gives (docs/results.md).

Every figure here is computed per seed from a sweep's runs (firm.report.load.Sweep), so seeds are
the unit of replication; a comparison between two arms is paired by seed (same held-out prompts,
sampling seeds and client partition: firm.sweep). An `Estimate` is the mean over seeds with its
95 % Student-t interval (firm.report.seeds).

A claim "x > 0" (or "x < 0") is decided by `verdict`: **holds** when the whole interval is on the
claimed side of 0, **does not hold** when the whole interval is on the other side (or at 0),
**inconclusive** when it contains 0 or there is no interval (fewer than 2 seeds). A zero-width
interval away from 0 (every seed gave the same value: a discrete statistic such as a rank
correlation over a few points) is no evidence by itself and is inconclusive; the ordered trade-off
then decides by the exact null distribution instead (`tradeoff_verdict`).

Per-run statistics (held-out rewards r_m(t) at rounds t = 0..R, t = 0 the base model):

- `oscillation` (smoothness): sum_m [ sum_t |r_m(t) - r_m(t-1)| - |r_m(R) - r_m(0)| ], the total
  variation of the held-out rewards minus their net change: 0 for monotone training curves, and
  the back-and-forth otherwise (in reward units, summed over objectives);
- `worst_early_change` (common descent): min_m [r_m(E) - r_m(0)] for the first E rounds: whether
  every objective improved early (> 0) or some objective was given up;
- `spearman_tradeoff` (ordered trade-off): Spearman's rho between p_m and the achieved r_m(R)
  across an arm's preference points at one seed;
- `gain_per_mb`: mean_m [r_m(R) - r_m(0)] per MB (1e6 bytes) uploaded by all clients over the run,
  per seed from the arm's means, where that gain is positive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
from scipy import stats

from firm.report.load import Run, Sweep
from firm.report.seeds import Estimate

Verdict = Literal["holds", "does not hold", "inconclusive"]


def verdict(estimate: Estimate, direction: Literal[">", "<"]) -> Verdict:
    """The claim "mean {direction} 0" decided by the interval (see the module docstring)."""
    if estimate.n < 2 or not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return "inconclusive"
    low, high = (estimate.low, estimate.high) if direction == ">" else (-estimate.high, -estimate.low)
    if low == high != 0:  # no spread over the seeds: the t interval says nothing
        return "inconclusive"
    if low > 0:
        return "holds"
    if high <= 0:
        return "does not hold"
    return "inconclusive"


def eval_curve(run: Run, names: Sequence[str]) -> list[list[float]]:
    """[T + 1, M] held-out rewards: the base model's (round 0), then every evaluated round in order
    (with eval.every > 1, row t is the t-th evaluation, not round t)."""
    curve = [[run.base_eval[n] for n in names]]
    for row in run.metrics:
        evals = row.get("eval")
        if isinstance(evals, dict) and all(n in evals for n in names):  # a `local` reference's spreads: their means
            curve.append([float(v["mean"] if isinstance(v := evals[n], dict) else v) for n in names])
    return curve


def oscillation(curve: Sequence[Sequence[float]]) -> float:
    """Total variation minus net change of each objective's curve, summed over objectives (0: monotone)."""
    r = np.asarray(curve, dtype=float)
    if len(r) < 2:
        return 0.0
    tv = np.abs(np.diff(r, axis=0)).sum(axis=0)
    return float((tv - np.abs(r[-1] - r[0])).sum())


def worst_early_change(curve: Sequence[Sequence[float]], rounds: int) -> float:
    """min over objectives of r_m(E) - r_m(0), E = min(rounds, evaluated rounds)."""
    r = np.asarray(curve, dtype=float)
    e = min(rounds, len(r) - 1)
    return float((r[e] - r[0]).min())


def spearman_tradeoff(preferences: Sequence[Sequence[float]], finals: Sequence[Sequence[float]], m: int) -> float:
    """Spearman's rho between p_m and r_m across preference points: nan with fewer than 3 points or a constant
    p_m (nothing to rank against), 0 when r_m is the same at every p (no ordering shown: counted, not dropped,
    so a seed without a trade-off weighs against the claim)."""
    p = [pref[m] for pref in preferences]
    r = [f[m] for f in finals]
    if len(p) < 3 or len(set(p)) < 2:
        return math.nan
    if len(set(r)) < 2:
        return 0.0
    return float(stats.spearmanr(p, r).statistic)


def spearman_null_tail(rho: float, k: int) -> float:
    """P(Spearman's rho >= `rho`) over k untied points when p and r are unrelated: the exact share of
    the k! rankings (k <= 8), with a 1e-9 slack for float rho."""
    if not 3 <= k <= 8:
        raise ValueError(f"the exact null needs 3 to 8 points, got {k}")
    denom = k * (k * k - 1)
    rhos = [1.0 - 6.0 * sum((i - j) ** 2 for i, j in enumerate(perm)) / denom for perm in itertools.permutations(range(k))]
    return sum(r >= rho - 1e-9 for r in rhos) / len(rhos)


def tradeoff_verdict(rhos: dict[int, float], points: int, level: float = 0.95) -> tuple[Estimate, Verdict]:
    """The ordered trade-off "rho > 0" from per-seed rhos over `points` preferences: `verdict` of the t
    interval, except when every seed gave the same rho (no spread). Then seeds are independent draws
    under the null, so P(all n seeds >= rho) = tail^n (`spearman_null_tail`): holds when that is below
    (1 - level) / 2, does not hold when P(all n <= rho) is, else inconclusive. Two seeds at rho = 0.5 over
    3 points: 0.5^2 = 0.25, inconclusive; three seeds at rho = 1 over 5 points: (1/120)^3, holds."""
    estimate = over(rhos)
    estimate = Estimate(estimate.mean, max(estimate.low, -1.0), min(estimate.high, 1.0), estimate.n)  # within [-1, 1]
    values = set(rhos.values())
    if estimate.n < 2 or len(values) != 1 or not 3 <= points <= 8:
        return estimate, verdict(estimate, ">")
    rho, alpha = values.pop(), (1.0 - level) / 2.0
    if rho > 0 and spearman_null_tail(rho, points) ** estimate.n < alpha:
        return estimate, "holds"
    if rho <= 0 and spearman_null_tail(-rho, points) ** estimate.n < alpha:  # rho is symmetric under the null
        return estimate, "does not hold"
    return estimate, "inconclusive"


def mean_gain(run: Run, names: Sequence[str]) -> float:
    """Mean over objectives of the final held-out reward minus the base model's."""
    return sum(run.final_eval[n] - run.base_eval[n] for n in names) / len(names)


def upload_mb(run: Run) -> float:
    """MB (1e6 bytes) uploaded by all clients over the run (nan with none)."""
    up, _ = run.total_bytes
    return up / 1e6 if up > 0 else math.nan


def gain_per_mb(gains: dict[int, float], mbs: dict[int, float]) -> dict[int, float]:
    """seed -> mean gain / MB uploaded, from an arm's per-seed means (`per_seed` of `mean_gain`, `upload_mb`),
    only at the seeds where the gain is positive: a negative gain over more bytes would come out nearer 0
    and look better, so a ratio is defined only for a gain."""
    return {s: g / mbs[s] for s, g in gains.items() if g > 0 and s in mbs and mbs[s] > 0}


def upload_per_client_round(run: Run) -> float:
    """Bytes uploaded per participating client per round (mean over rounds)."""
    per = []
    for row in run.metrics:
        clients = row.get("clients") or []
        up = (row.get("comm") or {}).get("upload_bytes")
        if clients and up is not None:
            per.append(float(up) / len(clients))
    return float(np.mean(per)) if per else math.nan


def mean_drift(run: Run, key: str = "updates") -> float:
    """Mean of `drift.<key>` over the rounds that report it (nan if none)."""
    values = [float(d[key]) for row in run.metrics if isinstance(d := row.get("drift"), dict) and d.get(key) is not None]
    return float(np.mean(values)) if values else math.nan


def per_seed(sweep: Sweep, label: str, statistic: Callable[[Run], float]) -> dict[int, float]:
    """seed -> mean of `statistic` over the arm's usable points at that seed (its preferences)."""
    out: dict[int, float] = {}
    for seed in sweep.seeds:
        values = [statistic(p.run) for p in sweep.usable(label, seed) if p.run is not None]
        values = [v for v in values if math.isfinite(v)]
        if values and seed is not None:
            out[seed] = float(np.mean(values))
    return out


def tradeoff_by_seed(sweep: Sweep, label: str, m: int) -> dict[int, float]:
    """seed -> `spearman_tradeoff` of objective m across the arm's preference points at that seed."""
    out: dict[int, float] = {}
    for seed in sweep.seeds:
        points = sorted(sweep.usable(label, seed), key=lambda p: p.preference)
        rho = spearman_tradeoff([p.preference for p in points], [p.final for p in points], m)
        if math.isfinite(rho) and seed is not None:
            out[seed] = rho
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """Estimate of a - b over the seeds both have."""
    return Estimate.of(a[s] - b[s] for s in a if s in b)


def over(values: dict[int, float] | Iterable[float]) -> Estimate:
    """Estimate over seeds of per-seed values."""
    return Estimate.of(values.values() if isinstance(values, dict) else values)


def paired_separation(a: Run, b: Run, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per objective: (final_a - final_b, its paired standard error over held-out prompts) for two runs
    evaluated on the same prompts with the same sampling seeds: sd_j(d_j) / sqrt(P)."""
    pa, pb = a.summary.get("final_eval_prompt_means"), b.summary.get("final_eval_prompt_means")
    out: dict[str, tuple[float, float]] = {}
    if not pa or not pb or len(pa) != len(pb) or len(pa) < 2:
        return out
    d = np.asarray(pa, dtype=float) - np.asarray(pb, dtype=float)  # [P, M]
    se = d.std(axis=0, ddof=1) / math.sqrt(len(d))
    for m, name in enumerate(names):
        out[name] = (float(d[:, m].mean()), float(se[m]))
    return out
