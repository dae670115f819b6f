"""Intervals over seeds: the mean of one figure per seed and its Student-t confidence interval.

Every across-seed figure of the project (a sweep's hypervolumes, docs/results.md's claims, the
privacy and reward-learning benchmarks) is summarised by `mean_interval`; `interval_record` is its
JSON form in sweep.json. Seeds are the unit of replication; a paired difference between two arms
is one figure per seed, summarised the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of `values` (one figure per seed) and its Student-t confidence interval: (mean, low, high, n).

        low, high = mean -/+ t_{(1 + level) / 2, n - 1} * s / sqrt(n),   s = the sample std (ddof 1)

    The t quantile (scipy.stats.t) accounts for estimating s from few seeds: at n = 3 the 95 %
    half-width is 4.30 s / sqrt(3), not 1.96 s / sqrt(3). One value has no interval: (value, nan,
    nan, 1); none gives (nan, nan, nan, 0). Non-finite values raise ValueError (leave out the seeds
    that have no figure instead, so that n says how many there are).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise ValueError(f"values must be finite, got {arr.tolist()}")
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    from scipy.stats import t  # scipy.stats takes ~0.3 s to import: only when an interval is asked for

    half = float(t.ppf(0.5 + level / 2.0, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def interval_record(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """`mean_interval` as JSON: {"mean", "low", "high", "n", "level"}, null for what one value cannot give."""
    mean, low, high, n = mean_interval(values, level)
    finite = {"mean": mean, "low": low, "high": high}
    return {**{k: (v if math.isfinite(v) else None) for k, v in finite.items()}, "n": n, "level": level}
