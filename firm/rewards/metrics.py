"""PluralLLM's alignment score, adapted to ratings, and its fairness view across groups.

PluralLLM (arXiv 2503.09925, following GPO, arXiv 2310.11523) scores a group g on a survey
question q by how close the predicted distribution over the question's options is to the group's
true one,

    AS(g, q) = 1 - JS(p_pred(g, q), p_true(g, q)),   JS = the Jensen-Shannon distance, base 2, in [0, 1],

and reports, over groups, the mean, the worst group and the spread (its fairness measure).

Deviation (our data has one rating per conversation, not a group's answer distribution per
question): a "question" is a starter prompt; a group's true distribution for it is the histogram
of that group's ratings of its conversations on that prompt, over the levels 1..K, and the
predicted distribution is the mean of the predicted distributions of those same conversations.
A group's score is 1 - the mean distance over its distinct questions, each question weighted
equally however many conversations it has (as PluralLLM weights survey questions).
`item_alignment` (each item's prediction against the one-hot of its rating) and `mae` (of the
expected level) are reported beside it: the question-level score forgives a model that gets each
item wrong but the mix right, the per-item one does not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance (the square root of the divergence) in base 2, in [0, 1]:
    scipy.spatial.distance.jensenshannon(p, q, base=2). p, q [K] non-negative, each normalised to sum 1.

    Rounding can make the divergence of two (nearly) equal distributions a tiny negative number, whose
    square root scipy returns as NaN; that is read as 0."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"js_distance: p {p.shape} and q {q.shape} must be vectors of the same length")
    for name, v in (("p", p), ("q", q)):
        if not np.all(np.isfinite(v)) or np.any(v < 0) or v.sum() <= 0:
            raise ValueError(f"js_distance: {name} must be non-negative and finite with a positive sum, got {v}")
    d = float(jensenshannon(p, q, base=2))
    return 0.0 if math.isnan(d) else min(d, 1.0)


def _checked(probs: np.ndarray, levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """probs [N, K] as float64, levels [N] as int64 in 1..K; N >= 1."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(levels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"need probs [N, K] and levels [N] with N >= 1, got {p.shape} and {y.shape}")
    if np.any(y < 1) or np.any(y > p.shape[1]):
        raise ValueError(f"levels must lie in 1..{p.shape[1]}, got {sorted(set(y.tolist()))}")
    return p, y


def group_alignment(probs: np.ndarray, levels: Sequence[int], questions: Sequence[str]) -> float:
    """One group's PluralLLM alignment score. probs [N, K]: the predicted distributions of its N items;
    levels [N]: their true ratings 1..K; questions [N]: their question ids.
    -> 1 - mean over the distinct questions q of js_distance(mean of probs over q's items, histogram of levels over them),
    questions weighted equally."""
    p, y = _checked(probs, levels)
    if len(questions) != len(y):
        raise ValueError(f"group_alignment: {len(questions)} question ids for {len(y)} items")
    keys = np.asarray(questions, dtype=object)
    distances = []
    for question in sorted(set(questions)):
        rows = keys == question  # [N] bool
        predicted = p[rows].mean(axis=0)  # [K]
        true = np.bincount(y[rows] - 1, minlength=p.shape[1]) / rows.sum()  # [K]
        distances.append(js_distance(predicted, true))
    return 1.0 - float(np.mean(distances))


def item_alignment(probs: np.ndarray, levels: Sequence[int]) -> float:
    """probs [N, K], levels [N] in 1..K -> 1 - mean over items of js_distance(probs_i, onehot(level_i))."""
    p, y = _checked(probs, levels)
    onehot = np.eye(p.shape[1])[y - 1]  # [N, K]
    return 1.0 - float(np.mean([js_distance(pi, ti) for pi, ti in zip(p, onehot, strict=True)]))


def mae(probs: np.ndarray, levels: Sequence[int]) -> float:
    """probs [N, K], levels [N] in 1..K -> mean |expected level - level|, expected level = sum_k k p_k."""
    p, y = _checked(probs, levels)
    expected = (p / p.sum(axis=1, keepdims=True)) @ np.arange(1, p.shape[1] + 1)  # [N]
    return float(np.mean(np.abs(expected - y)))


@dataclass(frozen=True)
class Fairness:
    """The alignment scores of several groups, summarised."""

    mean: float
    worst: float  # the lowest group's score
    spread: float  # the population standard deviation across groups (ddof = 0)
    gap: float  # best - worst
    groups: int

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def fairness(scores: Mapping[str, float]) -> Fairness:
    """Per-group scores (group -> score) -> their mean, worst, spread and gap. ValueError on no groups."""
    if not scores:
        raise ValueError("fairness: no groups")
    s = np.array(list(scores.values()), dtype=np.float64)
    return Fairness(float(s.mean()), float(s.min()), float(s.std()), float(s.max() - s.min()), len(s))
