"""Pareto masks and hypervolume (maximisation): hand-derived fronts, independent exact references, invariants.

HV(P, r) = vol( union_{p in P} [r, p] ) on normalised points, r = 0 unless stated.

The references share no code with moocore: in 2-D an exact sweep over the points sorted by the first
objective; in any dimension inclusion-exclusion over subsets, HV = sum_{S != {}} (-1)^(|S|+1)
prod_j (min_{i in S} p_ij - r_j)^+, since the boxes [r, p_i] intersect in [r, min_i p_i]; and the
dominance definition, checked pair by pair, for the mask.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from firm.pareto import Normalization, hypervolume, hypervolume_report, non_dominated

PROPERTY = settings(max_examples=100, deadline=None)

Array = npt.NDArray[np.float64]


def unit(m: int) -> Normalization:
    """Bounds [0, 1] on every objective: normalize is the identity on points already in [0, 1]^m."""
    return Normalization.from_points(np.zeros((0, m)), lower=0.0, upper=1.0)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- independent references


def hv_2d_sweep(points: Array, ref: tuple[float, float] = (0.0, 0.0)) -> float:
    """Exact 2-D HV for maximisation: sweep x from the right; each slice [x_{i+1}, x_i] is covered up
    to the best y among points with x >= x_i."""
    rx, ry = ref
    pts = sorted(((x, y) for x, y in points if x > rx and y > ry), reverse=True)
    total, best_y = 0.0, ry
    for i, (x, y) in enumerate(pts):
        best_y = max(best_y, y)
        next_x = pts[i + 1][0] if i + 1 < len(pts) else rx
        total += (x - next_x) * (best_y - ry)
    return total


def hv_inclusion_exclusion(points: Array) -> float:
    """Exact HV with reference 0 for points >= 0, by inclusion-exclusion over all non-empty subsets."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), k):
            total += (-1) ** (k + 1) * float(np.prod(points[list(subset)].min(axis=0)))
    return total


def non_dominated_brute(points: Array) -> list[bool]:
    """p is dominated iff some q has q >= p everywhere and q > p somewhere."""
    return [not any((q >= p).all() and (q > p).any() for q in points) for p in points]


# ---------------------------------------------------------------- strategies

# A coarse grid mixed with arbitrary values, so ties and exact duplicates are common.
COORD = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))


@st.composite
def unit_points(draw: st.DrawFn, min_m: int = 1, max_m: int = 4, min_n: int = 0, max_n: int = 12) -> Array:
    """[N, M] points in [0, 1]^M."""
    m = draw(st.integers(min_m, max_m))
    n = draw(st.integers(min_n, max_n))
    return draw(arrays(np.float64, (n, m), elements=COORD))


@st.composite
def raw_points(draw: st.DrawFn, max_m: int = 5) -> Array:
    """[N, M] rewards on an arbitrary scale, N >= 1."""
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(1, 12))
    return draw(arrays(np.float64, (n, m), elements=st.floats(-1e3, 1e3)))


# ---------------------------------------------------------------- hypervolume by hand


def test_hv_three_points_on_the_axes() -> None:
    # (1, 0) and (0, 1) lie ON the reference axes: their boxes [0,1]x[0,0] and [0,0]x[0,1] have zero
    # area. Only (0.5, 0.5) adds area: 0.5 * 0.5 = 0.25. (Not 0.5 + 0.25 = 0.75: that would need
    # (1, 0) to own a strip of height > 0.)
    points = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert hypervolume(points, unit(2)) == approx(0.25)
    # Reference (-1, -1): sweep in x from the right, covered height = best y so far + 1
    #   x in [0.5, 1]: y up to 0 -> 0.5 * 1   = 0.5
    #   x in [0, 0.5]: y up to 0.5 -> 0.5 * 1.5 = 0.75
    #   x in [-1, 0]: y up to 1 -> 1 * 2     = 2
    # total 3.25
    assert hypervolume(points, unit(2), reference=[-1.0, -1.0]) == approx(3.25)


def test_hv_staircase_of_three() -> None:
    # Sorted by x descending: (1, 0.2), (0.6, 0.6), (0.2, 1)
    #   x in [0.6, 1]: height 0.2 -> 0.4 * 0.2 = 0.08
    #   x in [0.2, 0.6]: height 0.6 -> 0.4 * 0.6 = 0.24
    #   x in [0, 0.2]: height 1   -> 0.2 * 1   = 0.20
    # total 0.52
    points = np.array([[1.0, 0.2], [0.2, 1.0], [0.6, 0.6]])
    assert hypervolume(points, unit(2)) == approx(0.52)


def test_hv_min_max_normalisation() -> None:
    # Raw (2, 10), (4, 30), (6, 20): lower (2, 10), upper (6, 30), span (4, 20) ->
    # normalised (0, 0), (0.5, 1), (1, 0.5).
    #   x in [0.5, 1]: height 0.5 -> 0.25
    #   x in [0, 0.5]: height 1   -> 0.5
    # total 0.75; (0, 0) adds nothing.
    raw = np.array([[2.0, 10.0], [4.0, 30.0], [6.0, 20.0]])
    norm = Normalization.from_points(raw)
    assert norm.lower == (2.0, 10.0) and norm.upper == (6.0, 30.0) and norm.method == "min-max"
    np.testing.assert_allclose(norm.normalize(raw), [[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]])
    assert hypervolume(raw, norm) == approx(0.75)


def test_dominated_points_do_not_change_hv() -> None:
    # The 0.52 staircase plus points inside it: (0.5, 0.5) < (0.6, 0.6); (0.6, 0.2) ties (0.6, 0.6)
    # on x and is below it; (0, 0) is the reference; (0.6, 0.6) again is a duplicate.
    front = np.array([[1.0, 0.2], [0.2, 1.0], [0.6, 0.6]])
    extra = np.array([[0.5, 0.5], [0.6, 0.2], [0.0, 0.0], [0.6, 0.6]])
    assert hypervolume(np.concatenate([front, extra]), unit(2)) == approx(0.52)


def test_hv_3d() -> None:
    # The upper corner of the unit cube dominates the whole cube: HV = 1.
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), unit(3)) == approx(1.0)
    # Same point on a raw scale: (5, -3, 100) with lower (0, -4, 0), upper (5, -3, 100) -> (1, 1, 1).
    norm = Normalization.from_points(np.array([[5.0, -3.0, 100.0]]), lower=[0.0, -4.0, 0.0], upper=[5.0, -3.0, 100.0])
    assert hypervolume(np.array([[5.0, -3.0, 100.0]]), norm) == approx(1.0)
    # Two boxes of 1 * 0.5 * 0.5 = 0.25 each, overlapping in 0.5 * 0.5 * 0.5 = 0.125: 0.375.
    assert hypervolume(np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5]]), unit(3)) == approx(0.375)


def test_degenerate_objective_maps_to_one() -> None:
    # The second objective is 5 for every point: it maps to 1.0, the first to 0, 1, 0.5.
    # HV = area under y = 1 up to x = 1 = 1.
    raw = np.array([[0.0, 5.0], [1.0, 5.0], [0.5, 5.0]])
    norm = Normalization.from_points(raw)
    np.testing.assert_array_equal(norm.normalize(raw), [[0.0, 1.0], [1.0, 1.0], [0.5, 1.0]])
    assert hypervolume(raw, norm) == approx(1.0)
    # A single point: every objective is degenerate, so it sits at (1, 1, 1).
    assert hypervolume(np.array([[3.0, -2.0, 7.0]]), Normalization.from_points(np.array([[3.0, -2.0, 7.0]]))) == approx(1.0)


def test_hv_5d_corner_is_exactly_one() -> None:
    # Min-max over these points: the first objective maps to (0, 1, 0), the other four are constant
    # and map to 1.0, so row 1 sits at the corner (1, 1, 1, 1, 1): HV = 1. moocore's 5-D algorithm
    # returns 1.0000000000000004 here; hypervolume caps it at the volume of the box [0, 1]^5.
    raw = np.array([[-0.5, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert hypervolume(raw, Normalization.from_points(raw)) == 1.0


def test_fixed_bounds_clip() -> None:
    # (2, -1) under bounds [0, 1] clips to (1, 0): on the reference axis, HV 0. (0.5, 3) -> (0.5, 1): 0.5.
    assert hypervolume(np.array([[2.0, -1.0]]), unit(2)) == 0.0
    np.testing.assert_array_equal(unit(2).normalize(np.array([[2.0, -1.0], [0.5, 3.0]])), [[1.0, 0.0], [0.5, 1.0]])
    assert hypervolume(np.array([[0.5, 3.0]]), unit(2)) == approx(0.5)


def test_no_points_gives_zero() -> None:
    assert hypervolume(np.zeros((0, 2)), unit(2)) == 0.0


# ---------------------------------------------------------------- non-dominated mask by hand


def test_non_dominated_by_hand_with_duplicates() -> None:
    points = np.array(
        [
            [1.0, 0.0],  # 0 front
            [0.0, 1.0],  # 1 front
            [0.5, 0.5],  # 2 front
            [0.5, 0.5],  # 3 duplicate of a front point: kept too (copies do not dominate each other)
            [1.0, 0.0],  # 4 duplicate of a front point: kept
            [0.0, 0.5],  # 5 ties (0, 1) on x, worse on y: dominated
            [0.4, 0.4],  # 6 dominated by (0.5, 0.5)
            [0.4, 0.4],  # 7 duplicate of a dominated point: dominated
        ]
    )
    mask = non_dominated(points)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [True, True, True, True, True, False, False, False]


def test_non_dominated_one_objective_and_empty() -> None:
    # One objective: the maximum, with all its copies.
    assert non_dominated(np.array([[3.0], [1.0], [3.0]])).tolist() == [True, False, True]
    assert non_dominated(np.zeros((0, 2))).tolist() == []


# ---------------------------------------------------------------- report


def test_report_normalises_all_sets_together() -> None:
    # All points: lower (0, 0), upper (3, 4).
    #   a: (1, 2) -> (1/3, 0.5), (3, 1) -> (1, 0.25); HV = (1 - 1/3) * 0.25 + (1/3) * 0.5 = 1/6 + 1/6 = 1/3
    #   b: (2, 4) -> (2/3, 1),   (0, 0) -> (0, 0);    HV = 2/3 * 1 = 2/3; (0, 0) is dominated.
    a = np.array([[1.0, 2.0], [3.0, 1.0]])
    b = np.array([[2.0, 4.0], [0.0, 0.0]])
    report = hypervolume_report({"a": a, "b": b})
    assert report["normalization"]["lower"] == [0.0, 0.0]
    assert report["normalization"]["upper"] == [3.0, 4.0]
    assert report["normalization"]["method"].startswith("min-max")
    assert report["reference"] == [0.0, 0.0]
    assert report["hypervolume"]["a"] == approx(1 / 3)
    assert report["hypervolume"]["b"] == approx(2 / 3)
    assert report["front"] == {"a": [0, 1], "b": [0]}
    assert json.loads(json.dumps(report)) == report
    # Normalised on its own, a would span its own box: (0, 1), (1, 0), HV 0. Separate
    # normalisations are not comparable.
    assert hypervolume(a, Normalization.from_points(a)) == 0.0


def test_report_fixed_bounds() -> None:
    # Same sets, bounds given: lower 0 (broadcast), upper (3, 4) -> same numbers, method "fixed".
    report = hypervolume_report({"a": [[1.0, 2.0], [3.0, 1.0]], "b": [[2.0, 4.0], [0.0, 0.0]]}, lower=0.0, upper=[3.0, 4.0])
    assert report["normalization"]["method"].startswith("fixed")
    assert report["hypervolume"]["a"] == approx(1 / 3)
    assert report["hypervolume"]["b"] == approx(2 / 3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: non_dominated(np.array([1.0, 2.0])), r"2-D array \[N, M\].*shape \(2,\)"),
        (lambda: non_dominated(np.zeros((2, 2, 2))), r"2-D array"),
        (lambda: non_dominated(np.zeros((3, 0))), r"at least one objective"),
        (lambda: non_dominated(np.array([[1.0, 2.0], [np.nan, 0.0]])), r"finite; NaN or inf in rows \[1\]"),
        (lambda: hypervolume(np.array([[0.5, np.inf]]), unit(2)), r"NaN or inf in rows \[0\]"),
        (lambda: hypervolume(np.array([[0.5, 0.5, 0.5]]), unit(2)), r"3 objectives.*expected 2"),
        (lambda: hypervolume(np.array([[0.5, 0.5]]), unit(2), reference=[0.0, 0.0, 0.0]), r"reference must .*shape \(2,\)"),
        (lambda: hypervolume(np.array([[0.5, 0.5]]), unit(2), reference=[0.0, np.nan]), r"reference must be finite"),
        (lambda: Normalization(lower=(1.0, 0.0), upper=(0.0, 1.0)), r"lower <= upper"),
        (lambda: Normalization(lower=(0.0,), upper=(1.0, 1.0)), r"shape \(M,\)"),
        (lambda: Normalization(lower=(0.0, math.nan), upper=(1.0, 1.0)), r"finite"),
        (lambda: Normalization.from_points(np.ones((2, 2)), lower=[0.0, 0.0, 0.0]), r"lower must .*shape \(2,\)"),
        (lambda: Normalization.from_points(np.zeros((0, 2))), r"zero points"),
        (lambda: hypervolume_report({}), r"empty"),
        (lambda: hypervolume_report({"a": np.ones((1, 2)), "b": np.ones((1, 3))}), r"same number of objectives"),
        (lambda: hypervolume_report({"a": np.ones((1, 2)), "b": [[0.0, np.nan]]}), r"points_by_name\['b'\].*rows \[0\]"),
    ],
)
def test_bad_input_raises(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- properties


@PROPERTY
@given(unit_points(min_m=2, max_m=2), st.tuples(st.floats(-0.5, 0.5), st.floats(-0.5, 0.5)))
def test_hv_matches_2d_sweep(points: Array, ref: tuple[float, float]) -> None:
    assert hypervolume(points, unit(2), reference=list(ref)) == approx(hv_2d_sweep(points, ref))


@PROPERTY
@given(st.integers(1, 4).flatmap(lambda m: unit_points(min_m=m, max_m=m, max_n=7)))
def test_hv_matches_inclusion_exclusion(points: Array) -> None:
    assert hypervolume(points, unit(points.shape[1])) == approx(hv_inclusion_exclusion(points))


@PROPERTY
@given(unit_points(min_n=1), st.data())
def test_hv_monotone_in_added_point(points: Array, data: st.DataObject) -> None:
    # Under a fixed normalisation (see the module docstring for why not min-max).
    m = points.shape[1]
    new = data.draw(arrays(np.float64, (1, m), elements=COORD))
    before = hypervolume(points, unit(m))
    assert hypervolume(np.concatenate([points, new]), unit(m)) >= before - 1e-12


@PROPERTY
@given(unit_points(), st.randoms(use_true_random=False))
def test_hv_permutation_invariant(points: Array, rng: random.Random) -> None:
    order = list(range(len(points)))
    rng.shuffle(order)
    m = points.shape[1]
    assert hypervolume(points[order], unit(m)) == approx(hypervolume(points, unit(m)))


@PROPERTY
@given(unit_points())
def test_hv_of_front_equals_hv_of_all(points: Array) -> None:
    m = points.shape[1]
    assert hypervolume(points[non_dominated(points)], unit(m)) == approx(hypervolume(points, unit(m)))


@PROPERTY
@given(raw_points())
def test_min_max_normalisation_and_hv_in_unit_range(points: Array) -> None:
    norm = Normalization.from_points(points)
    normed = norm.normalize(points)
    assert ((normed >= 0.0) & (normed <= 1.0)).all()
    varies = points.max(axis=0) > points.min(axis=0)
    np.testing.assert_array_equal(normed.min(axis=0)[varies], 0.0)
    np.testing.assert_array_equal(normed.max(axis=0), 1.0)  # degenerate objectives map to 1.0 as well
    assert 0.0 <= hypervolume(points, norm) <= 1.0


@PROPERTY
@given(unit_points())
def test_non_dominated_matches_definition(points: Array) -> None:
    assert non_dominated(points).tolist() == non_dominated_brute(points)
