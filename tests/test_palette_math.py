"""The MAP palette dual (firm.palette.dual / .federated) against closed forms and independent solvers.

Problem (MAP, arXiv 2410.19198): given reward samples r_i in R^M (weights w_i) and targets c,

    lambda* = argmin_{lambda >= 0} g(lambda),   g(lambda) = log( sum_i w_i exp(lambda^T r_i) / sum_i w_i ) - lambda^T c,

tilted distribution q_i ∝ w_i exp(lambda^T r_i), predicted = E_q[r], KL(q || p0) = lambda^T E_q[r] - log mean-exp.

Where the expected numbers come from:
  * Bernoulli {0, 1}: the tilted mean is a logistic function of lambda, inverted by hand.
  * Gaussians: the exponential tilt of N(mu, s^2) by lambda is N(mu + lambda s^2, s^2); the Gaussians are
    represented by a tensor-product Gauss–Hermite rule (exact for E[exp(lambda x)] to ~1e-12 here).
  * Random clouds: feasibility from a HiGHS LP (scipy), the minimum KL over reweightings from cvxpy
    (CLARABEL, exponential cone) — neither shares code with the dual solver.
  * Federated solves against the pooled solve on the same samples; quantiles against numpy.
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import brentq, linprog
from scipy.special import logsumexp, rel_entr

from firm.palette.dual import (
    FEASIBILITY_TOL,
    MAX_LAMBDA,
    PaletteSolution,
    Samples,
    feasible_by_lp,
    merge_stats,
    quantile,
    solve_palette,
    tilt_stats,
)
from firm.palette.federated import FLOAT_BYTES, Federation
from firm.palette.targets import Target, parse_targets

Array = npt.NDArray[np.float64]


def solve(rewards: Array, spec: str, names: list[str], weights: Array | None = None) -> PaletteSolution:
    return solve_palette(Samples(np.asarray(rewards, dtype=np.float64), weights), parse_targets(spec, names), names)


def absolute_targets(c: Array, names: list[str]) -> list[Target]:
    """Absolute targets (any sign; the spec string would read "-3" as an improvement), -inf = unconstrained."""
    return [Target(n, "absolute", float(x)) for n, x in zip(names, c, strict=True) if np.isfinite(x)]


# ---------------------------------------------------------------- 1. one value, Bernoulli {0, 1}


@pytest.mark.parametrize("c", [0.6, 0.75, 0.9, 0.99])
def test_bernoulli_equal_weights(c: float) -> None:
    # Samples {0, 1}, p0 = (1/2, 1/2). q_1 = e^l / (1 + e^l) = sigmoid(l), so E_q[r] = c  <=>  l = log(c / (1 - c)).
    # log mean-exp = log((1 + e^l) / 2) = log(1 / (2 (1 - c))), hence
    # KL = l c - log mean-exp = c log(c/(1-c)) + log(2(1-c)) = c log(2c) + (1-c) log(2(1-c)).
    sol = solve(np.array([[0.0], [1.0]]), f"a={c}", ["a"])
    assert sol.feasible and not sol.met_by_reference
    assert sol.lam[0] == pytest.approx(math.log(c / (1 - c)), abs=1e-6)
    assert sol.predicted[0] == pytest.approx(c, abs=1e-6)
    assert sol.kl == pytest.approx(c * math.log(2 * c) + (1 - c) * math.log(2 * (1 - c)), abs=1e-6)
    # reference: mean 1/2, (population) std 1/2; one value -> preference (1,)
    np.testing.assert_allclose(sol.reference_mean, [0.5], atol=1e-15)
    np.testing.assert_allclose(sol.reference_std, [0.5], atol=1e-15)
    np.testing.assert_array_equal(sol.preference, [1.0])
    assert sol.queries > 1


@pytest.mark.parametrize("c", [0.3, 0.5, 0.8, 0.95])
def test_bernoulli_weighted(c: float) -> None:
    # Samples {0, 1} with weights (3, 1): p0 = (3/4, 1/4), reference mean 1/4, std sqrt(3/16) = sqrt(3)/4.
    # q_1 = e^l / (3 + e^l) = c  <=>  e^l = 3c / (1 - c),  l = log(3c / (1 - c)).
    # KL = sum q log(q / p0) = c log(4c) + (1 - c) log(4 (1 - c) / 3).
    sol = solve(np.array([[0.0], [1.0]]), f"a={c}", ["a"], weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(sol.reference_mean, [0.25], atol=1e-15)
    np.testing.assert_allclose(sol.reference_std, [math.sqrt(3) / 4], atol=1e-15)
    assert sol.feasible
    assert sol.lam[0] == pytest.approx(math.log(3 * c / (1 - c)), abs=1e-6)
    assert sol.predicted[0] == pytest.approx(c, abs=1e-6)
    assert sol.kl == pytest.approx(c * math.log(4 * c) + (1 - c) * math.log(4 * (1 - c) / 3), abs=1e-6)
    # same answer as repeating the samples: {0, 0, 0, 1} unweighted
    rep = solve(np.array([[0.0], [0.0], [0.0], [1.0]]), f"a={c}", ["a"])
    np.testing.assert_allclose(rep.lam, sol.lam, atol=1e-6)
    assert rep.kl == pytest.approx(sol.kl, abs=1e-9)


# ---------------------------------------------------------------- 2. independent Gaussians (Gauss–Hermite)

MU = np.array([0.2, 5.0])
SIGMA = np.array([0.1, 3.0])


def gaussian_cloud(mu: Array, sigma: Array, nodes: int = 60) -> tuple[Array, Array]:
    """Tensor-product Gauss–Hermite rule for N(mu, diag(sigma^2)): rewards [nodes^2, 2], weights [nodes^2].

    hermegauss integrates against exp(-x^2/2); node x -> mu + sigma x, weights w_i w_j (their sum,
    2 pi, is normalised away by the solver). The rule is exact for polynomials of degree < 120, so
    E[exp(l x)] = exp(l^2 / 2) holds to rounding for the |l sigma| <= ~10 met here.
    """
    x, w = hermegauss(nodes)
    grid = np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)
    return mu + sigma * grid, np.outer(w, w).reshape(-1)


@pytest.mark.parametrize(
    ("spec", "c", "lam", "kl"),
    [
        # lambda_m = (c_m - mu_m) / s_m^2,  KL = sum_m (c_m - mu_m)^2 / (2 s_m^2)
        # (0.15 / 0.01, 3 / 9) = (15, 1/3);  KL = 0.0225 / 0.02 + 9 / 18 = 1.125 + 0.5
        ("a=0.35,b=8", (0.35, 8.0), (15.0, 1 / 3), 1.625),
        # (0.05 / 0.01, 6 / 9) = (5, 2/3);  KL = 0.0025 / 0.02 + 36 / 18 = 0.125 + 2
        ("a=0.25,b=11", (0.25, 11.0), (5.0, 2 / 3), 2.125),
        # improvements over the mean: c = (0.2 + 0.05, 5 + 3) = (0.25, 8);  lambda = (5, 1/3);  KL = 0.125 + 0.5
        ("a=+0.05,b=+3", (0.25, 8.0), (5.0, 1 / 3), 0.625),
        # one value, a 3-std tilt: l_a = (0.5 - 0.2) / 0.01 = 30, b unconstrained;  KL = 0.09 / 0.02
        ("a=0.5", (0.5, -np.inf), (30.0, 0.0), 4.5),
    ],
)
def test_gaussian_closed_form(spec: str, c: tuple[float, float], lam: tuple[float, float], kl: float) -> None:
    rewards, weights = gaussian_cloud(MU, SIGMA)
    sol = solve(rewards, spec, ["a", "b"], weights)
    np.testing.assert_allclose(sol.reference_mean, MU, atol=1e-12)
    np.testing.assert_allclose(sol.reference_std, SIGMA, atol=1e-12)
    np.testing.assert_allclose(sol.targets, c, atol=1e-12)
    assert sol.feasible and not sol.met_by_reference
    np.testing.assert_allclose(sol.lam, lam, atol=1e-6, rtol=1e-6)
    # constrained values end exactly at their targets; an unconstrained one keeps its mean (independence)
    np.testing.assert_allclose(sol.predicted, np.where(np.isfinite(c), c, MU), atol=1e-6)
    assert sol.kl == pytest.approx(kl, abs=1e-6)
    np.testing.assert_allclose(sol.preference, np.asarray(lam) / sum(lam), atol=1e-6)


@pytest.mark.parametrize("spec", ["a=0.3", "a=0.3,b=-1", "a=0.3,b=4"])
def test_gaussian_one_value_constrained(spec: str) -> None:
    # Only a binds: l_a = 0.1 / 0.01 = 10, KL = 0.01 / 0.02 = 0.5. b is unconstrained, or its target
    # (5 - 1 = 4) lies below its mean: l_b must be exactly 0, and since the rule is a tensor product
    # (independent values) tilting a leaves b's mean at 5 to rounding.
    rewards, weights = gaussian_cloud(MU, SIGMA)
    sol = solve(rewards, spec, ["a", "b"], weights)
    assert sol.feasible
    assert sol.lam[1] == 0.0
    assert sol.lam[0] == pytest.approx(10.0, abs=1e-6)
    np.testing.assert_allclose(sol.predicted, [0.3, 5.0], atol=1e-9)
    assert sol.kl == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_array_equal(sol.preference, [1.0, 0.0])


# ---------------------------------------------------------------- 3. the reference already meets the targets

# mean (1.5, 25), both exactly representable; inverted-cdf 0.25-quantile of a = 0, of b = 10
MET = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]])


@pytest.mark.parametrize(
    "spec",
    [
        "a=1.5,b=25",  # equal to the mean exactly
        "a=+0,b=-0",  # zero improvements: c = mean exactly
        "a=-0.1,b=-0.1",
        "a=1.0",
        "b=q0.25",
        "a=-0.1,b=25",
    ],
)
@pytest.mark.parametrize("federated", [False, True])
def test_met_by_reference(spec: str, federated: bool) -> None:
    names = ["a", "b"]
    oracle = Federation([Samples(MET[:1]), Samples(MET[1:])]) if federated else Samples(MET)
    sol = solve_palette(oracle, parse_targets(spec, names), names)
    assert sol.feasible and sol.met_by_reference
    np.testing.assert_array_equal(sol.lam, [0.0, 0.0])
    assert sol.kl == 0.0
    assert sol.queries == 2  # just the reference statistics: raw (for the centre), then centred
    np.testing.assert_allclose(sol.predicted, [1.5, 25.0], atol=1e-14)
    assert np.isnan(sol.preference).all()
    d = sol.to_dict()
    assert d["met_by_reference"] is True and d["feasible"] is True and d["kl"] == 0.0


# ---------------------------------------------------------------- 4. infeasible palettes

UNIT = np.linspace(0.0, 1.0, 11)[:, None]  # 0, 0.1, ..., 1: mean 0.5, variance 0.01 * sum_{k=-5..5} k^2 / 11 = 0.1


def test_infeasible_above_max_sample() -> None:
    sol = solve(UNIT, "a=1.5", ["a"])
    assert not feasible_by_lp(UNIT, np.array([1.5]))
    assert not sol.feasible and not sol.met_by_reference
    assert "infeasible" in sol.reason
    # lambda ends at the cap, MAX_LAMBDA per reference std; all mass on the top sample
    assert sol.lam[0] == pytest.approx(MAX_LAMBDA / math.sqrt(0.1), rel=1e-9)
    assert sol.predicted[0] == pytest.approx(1.0, abs=1e-6)
    assert sol.to_dict()["feasible"] is False


def test_target_at_max_sample() -> None:
    # c = max sample: the LP (closed feasible set) says feasible, reachable exactly only by the point mass
    # on the top sample. The solver meets it within FEASIBILITY_TOL std at a finite lambda: the weight on
    # the next sample (0.9) must be <~ 1e-6 std / 0.1, i.e. lambda ~ log(3e5) / 0.1 ~ 126, nu ~ 40 < the cap.
    # KL -> KL(point mass || uniform over 11) = log 11.
    # (dual.py's module docstring says edge targets are reported infeasible; with the tolerance they are not.)
    assert feasible_by_lp(UNIT, np.array([1.0]))
    sol = solve(UNIT, "a=1.0", ["a"])
    assert sol.feasible
    assert sol.predicted[0] >= 1.0 - FEASIBILITY_TOL * math.sqrt(0.1)
    assert sol.lam[0] < MAX_LAMBDA / math.sqrt(0.1)
    assert sol.kl == pytest.approx(math.log(11), abs=1e-6)
    # 1e-4 std beyond the max sample: outside by more than the tolerance -> infeasible, with a certificate
    above = solve(UNIT, f"a={1.0 + 1e-4 * math.sqrt(0.1)!r}", ["a"])
    assert not above.feasible and "infeasible" in above.reason


LINE_R1 = np.linspace(0.0, 1.0, 101)
LINE = np.stack([LINE_R1, 1.0 - LINE_R1], axis=1)  # every sample has r1 + r2 = 1; mean (0.5, 0.5)


def test_jointly_infeasible_line() -> None:
    # Each target alone is reachable (0.6 < 1), together they need E[r1 + r2] = 1.2 > 1.
    c = np.array([0.6, 0.6])
    assert feasible_by_lp(LINE, np.array([0.6, -np.inf])) and feasible_by_lp(LINE, np.array([-np.inf, 0.6]))
    assert not feasible_by_lp(LINE, c)
    sol = solve(LINE, "a=0.6,b=0.6", ["a", "b"])
    assert not sol.feasible
    assert "infeasible" in sol.reason
    # the certificate direction is u ∝ lambda = (1, 1) (both at the cap, same std): u^T r <= 1 < u^T c
    np.testing.assert_allclose(sol.lam[0], sol.lam[1], rtol=1e-9)
    assert "a + b" in sol.reason or "0.5*a + 0.5*b" in sol.reason


def test_line_met_by_reference() -> None:
    sol = solve(LINE, "a=0.45,b=0.45", ["a", "b"])
    assert sol.feasible and sol.met_by_reference and sol.queries == 2


def test_line_feasible_with_one_active_value() -> None:
    # (0.7, 0.2): tilt on r1 alone gives E[r1] = 0.7 and E[r2] = 1 - 0.7 = 0.3 > 0.2, so lambda_2 = 0.
    # (Along the line only l1 - l2 is identified; g = h(l1 - l2) - (l1 - l2) c1 + l2 (1 - c1 - c2) with
    # 1 - c1 - c2 = 0.1 > 0, so any l2 > 0 costs.) l1 is the root of E_{q(l)}[r1] = 0.7, found here by brentq.
    sol = solve(LINE, "a=0.7,b=0.2", ["a", "b"])
    assert sol.feasible and not sol.met_by_reference
    assert sol.lam[1] == 0.0

    def tilted_mean(lam: float) -> float:
        a = lam * LINE_R1
        q = np.exp(a - a.max())
        return float(q @ LINE_R1 / q.sum())

    lam1 = brentq(lambda x: tilted_mean(x) - 0.7, 0.0, 100.0, xtol=1e-14)
    assert sol.lam[0] == pytest.approx(lam1, abs=1e-6)
    np.testing.assert_allclose(sol.predicted, [0.7, 0.3], atol=1e-6)
    # KL = l1 E_q[r1] - log mean exp(l1 r1)
    kl = lam1 * 0.7 - (logsumexp(lam1 * LINE_R1) - math.log(len(LINE_R1)))
    assert sol.kl == pytest.approx(kl, abs=1e-6)


# ---------------------------------------------------------------- 5. random problems vs LP and cvxpy


def random_cloud(rng: np.random.Generator, num_values: int, n: int, kind: str) -> Array:
    scales = rng.uniform(0.1, 10.0, size=num_values)
    if kind == "gauss":  # correlated Gaussians, different scales and offsets
        mix = rng.normal(size=(num_values, num_values))
        return (rng.normal(size=(n, num_values)) @ mix) * scales + 5.0 * rng.normal(size=num_values)
    return rng.uniform(0.0, 1.0, size=(n, num_values)) * scales


def lp_margin(rewards: Array, c: Array, std: Array) -> float:
    """max t s.t. some distribution q over the samples has q^T r_m >= c_m + t std_m on the constrained values.

    t > 0: strictly feasible by t std; t < 0: infeasible by |t| std (HiGHS LP, variables (q, t)).
    """
    n = len(rewards)
    act = np.isfinite(c)
    res = linprog(
        np.r_[np.zeros(n), -1.0],
        A_ub=np.hstack([-rewards[:, act].T, std[act][:, None]]),
        b_ub=-c[act],
        A_eq=np.r_[np.ones(n), 0.0][None],
        b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)],
        method="highs",
    )
    assert res.status == 0
    return float(-res.fun)


def min_kl(rewards: Array, c: Array, mean: Array, std: Array) -> float:
    """min_q KL(q || uniform) s.t. E_q[r] >= c, by cvxpy/CLARABEL on standardised rewards."""
    n = len(rewards)
    act = np.isfinite(c)
    z = (rewards[:, act] - mean[act]) / std[act]
    cz = (c[act] - mean[act]) / std[act]
    p0 = np.full(n, 1.0 / n)
    q = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.rel_entr(q, p0))), [cp.sum(q) == 1, z.T @ q >= cz])
    try:
        problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:  # CLARABEL's equilibration occasionally breaks down on strongly tilted optima
        problem.solve(solver=cp.CLARABEL, equilibrate_enable=False)
    assert problem.status == cp.OPTIMAL
    # interior-point iterates can be -1e-12; clip before evaluating the objective ourselves
    qv = np.clip(q.value, 0.0, None)
    return float(rel_entr(qv / qv.sum(), p0).sum())


@pytest.mark.parametrize("seed", range(8))
def test_random_clouds_against_lp_and_cvxpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_values = 2 + seed % 3
    kind = "gauss" if seed % 2 == 0 else "uniform"
    rewards = random_cloud(rng, num_values, 200, kind)
    names = [f"v{m}" for m in range(num_values)]
    mean, std = rewards.mean(axis=0), rewards.std(axis=0)

    problems = []
    for k in range(6):
        c = mean + rng.uniform(-0.5, 2.0, size=num_values) * std
        if k % 3 == 0:
            c[rng.integers(num_values)] = -np.inf
        problems.append(c)
    # plus targets moved (all constrained values by the same number of std) to 0.01 std inside / outside the boundary
    for delta in (0.01, -0.01):
        c = mean + rng.uniform(0.0, 2.0, size=num_values) * std
        problems.append(c + (lp_margin(rewards, c, std) - delta) * std)

    verdicts = []
    for c in problems:
        margin = lp_margin(rewards, c, std)
        if abs(margin) < 1e-3:  # too close to the boundary for the capped solver to be expected to agree
            continue
        lp = feasible_by_lp(rewards, c)
        assert lp == (margin > 0)
        sol = solve_palette(Samples(rewards), absolute_targets(c, names), names)
        assert sol.feasible == lp, (c, margin, sol.reason)
        verdicts.append(lp)
        act = np.isfinite(c)
        assert np.all(sol.lam >= 0) and np.all(sol.lam[~act] == 0)
        if not sol.feasible:
            assert "infeasible" in sol.reason
            continue
        # KKT: primal feasibility and complementary slackness, in std units
        assert np.all(sol.predicted[act] >= c[act] - FEASIBILITY_TOL * std[act])
        binding = sol.lam > 1e-8
        assert np.all(np.abs(sol.predicted - c)[binding] <= 1e-6 * std[binding])
        # the reported KL and predicted are those of q_i ∝ exp(lambda^T r_i)
        a = rewards @ sol.lam
        q = np.exp(a - a.max())
        q /= q.sum()
        np.testing.assert_allclose(sol.predicted, q @ rewards, rtol=1e-9, atol=1e-9 * std.max())
        assert sol.kl == pytest.approx(float(rel_entr(q, np.full(len(q), 1 / len(q))).sum()), rel=1e-9, abs=1e-12)
        # ... and it is the smallest KL of any reweighting meeting the targets
        if sol.met_by_reference:
            assert sol.kl == 0.0
        else:
            assert sol.kl == pytest.approx(min_kl(rewards, c, mean, std), rel=1e-4, abs=1e-6)
    assert True in verdicts and False in verdicts


@pytest.mark.parametrize(("gain", "offset"), [(1e-3, 0.0), (1e3, 0.0), (1.0, 100.0), (2.0, -50.0), (0.01, 3.0)])
def test_affine_invariance(gain: float, offset: float) -> None:
    # r' = a r + b, c' = a c + b (a > 0): q_i ∝ exp(l'^T r'_i) = exp(a l'^T r_i) * const, so l' = l / a gives the
    # same q: predicted' = a predicted + b, KL' = KL. The solver works in std units, so this should hold to rounding.
    names = ["a", "b"]
    base = random_cloud(np.random.default_rng(21), 2, 200, "gauss")
    mean, std = base.mean(axis=0), base.std(axis=0)
    c = mean + np.array([0.8, 0.3]) * std
    ref = solve_palette(Samples(base), absolute_targets(c, names), names)
    sol = solve_palette(Samples(gain * base + offset), absolute_targets(gain * c + offset, names), names)
    assert ref.feasible and sol.feasible
    np.testing.assert_allclose(sol.lam * gain, ref.lam, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sol.predicted, gain * ref.predicted + offset, rtol=1e-9, atol=1e-6 * gain * std.max())
    assert sol.kl == pytest.approx(ref.kl, rel=1e-6, abs=1e-9)


# Regression: rewards far from 0. Uncentred, g = log mean exp(l^T r) - l^T c was the difference of two
# ~l * 1e4 numbers; its rounding noise (~1e-12) stalled L-BFGS-B with the targets ~2e-6 std short and the
# palette was reported infeasible. The statistics are now taken around the reference mean, so the shifted
# problem must give the centred problem's lambda.
def test_large_reward_offset_keeps_feasible_palette() -> None:
    names = ["a", "b"]
    base = np.random.default_rng(7).normal(size=(200, 2))
    centred = solve(base, "a=+1.0,b=+0.5", names)
    shifted = solve(base + 1e4, "a=+1.0,b=+0.5", names)
    assert centred.feasible
    assert shifted.feasible, shifted.reason
    np.testing.assert_allclose(shifted.lam, centred.lam, rtol=1e-6, atol=1e-6)


# Regression: a zero-weight outlier. Its lambda^T r once set the log-sum-exp shift, so the weighted sum
# underflowed to 0 and log() raised. Zero-weight samples are now ignored: p0 = uniform on {0, 1}, so a=0.9
# gives l = log 9, KL = 0.9 log 1.8 + 0.1 log 0.2 (as test_bernoulli_equal_weights), and a=2 is infeasible.
@pytest.mark.parametrize("spec", ["a=0.9", "a=2"])
def test_zero_weight_outlier(spec: str) -> None:
    sol = solve(np.array([[0.0], [1.0], [1000.0]]), spec, ["a"], weights=np.array([1.0, 1.0, 0.0]))
    if spec == "a=0.9":
        assert sol.feasible
        assert sol.lam[0] == pytest.approx(math.log(9), abs=1e-6)
        assert sol.kl == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6)
    else:
        assert not sol.feasible and "infeasible" in sol.reason


# ---------------------------------------------------------------- 6. federated = pooled


def uneven_clients(rng: np.random.Generator, num_values: int) -> list[Array]:
    """Nine blocks of samples with very different ranges and sizes, one of them a single sample."""
    return [
        rng.normal(0.0, 1.0, size=(90, num_values)),
        rng.normal(10.0, 0.1, size=(25, num_values)),
        rng.uniform(-50.0, -40.0, size=(7, num_values)),
        rng.normal(0.0, 1.0, size=(1, num_values)),
        rng.uniform(0.0, 1.0, size=(40, num_values)) * np.arange(1, num_values + 1),
        rng.normal(2.0, 3.0, size=(3, num_values)),
        rng.normal(-1.0, 0.5, size=(60, num_values)),
        rng.normal(0.5, 2.0, size=(2, num_values)),
        rng.exponential(1.0, size=(30, num_values)),
    ]


def split(blocks: list[Array], num_clients: int) -> list[Array]:
    """The blocks grouped into num_clients clients (1: everything in one; 7: the single sample alone)."""
    groups = {1: [range(9)], 3: [range(0, 2), range(2, 4), range(4, 9)], 7: [[0], [1, 8], [2], [3], [4], [5, 7], [6]]}
    return [np.concatenate([blocks[i] for i in g]) for g in groups[num_clients]]


@pytest.mark.parametrize("num_clients", [1, 3, 7])
@pytest.mark.parametrize("spec", ["v0=2.5,v1=+0.8,v2=q0.9", "v0=q0.7,v2=+1.5", "v0=+0.3,v1=+0.3,v2=+0.3", "v1=40"])
def test_federated_equals_pooled(num_clients: int, spec: str) -> None:
    names = ["v0", "v1", "v2"]
    num_values = len(names)
    blocks = uneven_clients(np.random.default_rng(7), num_values)
    pooled = np.concatenate(blocks)
    parts = split(blocks, num_clients)
    assert sum(len(p) for p in parts) == len(pooled)
    ref = solve(pooled, spec, names)
    fed = Federation([Samples(p) for p in parts])
    sol = solve_palette(fed, parse_targets(spec, names), names)

    assert sol.feasible == ref.feasible
    assert sol.num_samples == ref.num_samples == len(pooled)
    np.testing.assert_allclose(sol.targets, ref.targets, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sol.reference_mean, ref.reference_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sol.reference_std, ref.reference_std, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sol.lam, ref.lam, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sol.predicted, ref.predicted, rtol=1e-6, atol=1e-6)
    assert sol.kl == pytest.approx(ref.kl, rel=1e-6, abs=1e-6)

    # Cost accounting: every `stats` call is one round of 3 + M + M^2 floats per client; every quantile
    # bisection count is one round of 1 float per client. solve_palette's `queries` counts the stats calls.
    assert fed.rounds > 0 and sol.queries > 0
    count_rounds = fed.rounds - sol.queries
    assert (count_rounds > 0) == ("q" in spec)
    per_stats = FLOAT_BYTES * (3 + num_values + num_values**2)
    assert FLOAT_BYTES == 8
    assert fed.upload_bytes == num_clients * (sol.queries * per_stats + count_rounds * FLOAT_BYTES)


def test_federated_infeasible_agrees() -> None:
    names = ["v0", "v1"]
    blocks = uneven_clients(np.random.default_rng(3), 2)
    pooled = np.concatenate(blocks)
    spec = f"v0={float(pooled[:, 0].max()) + 1.0!r}"  # above every sample
    ref = solve(pooled, spec, names)
    sol = solve_palette(Federation([Samples(p) for p in split(blocks, 7)]), parse_targets(spec, names), names)
    assert not ref.feasible and not sol.feasible
    assert "infeasible" in sol.reason
    np.testing.assert_allclose(sol.lam, ref.lam, rtol=1e-9)


def assert_stats_equal(got, want) -> None:  # type: ignore[no-untyped-def]
    assert got.total == pytest.approx(want.total, rel=1e-12)
    assert got.shift == want.shift  # a max: exact
    assert got.sum_exp == pytest.approx(want.sum_exp, rel=1e-9)
    np.testing.assert_allclose(got.sum_r, want.sum_r, rtol=1e-9, atol=1e-9 * np.abs(want.sum_r).max())
    np.testing.assert_allclose(got.sum_rr, want.sum_rr, rtol=1e-9, atol=1e-9 * np.abs(want.sum_rr).max())
    assert got.log_mean_exp == pytest.approx(want.log_mean_exp, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_merge_stats_equals_union(weighted: bool) -> None:
    rng = np.random.default_rng(11)
    blocks = uneven_clients(rng, 3)
    pooled = np.concatenate(blocks)
    w = rng.uniform(0.1, 5.0, size=len(pooled)) if weighted else None
    cuts = np.cumsum([len(b) for b in blocks])[:-1]
    parts_w = [None] * len(blocks) if w is None else np.split(w, cuts)
    rmax = np.abs(pooled).max()
    top0 = pooled[:, 0].max()  # ~ 12; the block at -50..-40 is the most negative
    lambdas = [
        np.zeros(3),
        np.array([0.3, 0.0, 1.0]),
        np.array([2.0, 1.0, 0.5]),
        np.array([1000.0 / top0, 0.0, 0.0]),  # max lambda^T r = 1000: plain exp overflows (e^709 is the limit)
        np.array([-20.0, -20.0, 0.0]),  # the -50 block dominates (~ +2000); every other block underflows to 0
        np.array([1.0, 1.0, 1.0]) * 3000.0 / rmax,
    ]
    for lam in lambdas:
        want = tilt_stats(pooled, lam, w)
        got = merge_stats([tilt_stats(b, lam, pw) for b, pw in zip(blocks, parts_w, strict=True)])
        assert_stats_equal(got, want)
        # independent: log-sum-exp and softmax from scipy
        a = pooled @ lam
        lw = np.zeros(len(a)) if w is None else np.log(w)
        total = len(a) if w is None else w.sum()
        assert got.log_mean_exp == pytest.approx(logsumexp(a + lw) - math.log(total), rel=1e-12, abs=1e-9)
        q = np.exp(a + lw - logsumexp(a + lw))
        np.testing.assert_allclose(got.mean, q @ pooled, rtol=1e-9, atol=1e-9 * rmax)
        assert np.isfinite(got.sum_exp) and got.sum_exp > 0.0
    with np.errstate(over="ignore"):
        for lam in lambdas[3:]:
            assert not np.isfinite(np.exp(pooled @ lam).sum())  # the naive sum overflows


# ---------------------------------------------------------------- 7. quantile targets


@pytest.mark.parametrize("q", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_quantile_targets_match_numpy(q: float) -> None:
    names = ["a", "b"]
    rng = np.random.default_rng(5)
    rewards = np.stack([rng.normal(3.0, 2.0, size=200), rng.integers(0, 5, size=200) * 0.25], axis=1)  # b: ties
    expected = [np.quantile(rewards[:, m], q, method="inverted_cdf") for m in range(2)]
    spec = f"a=q{q},b=q{q}"
    pooled = solve(rewards, spec, names)
    fed = solve_palette(
        Federation([Samples(rewards[:17]), Samples(rewards[17:18]), Samples(rewards[18:])]), parse_targets(spec, names), names
    )
    for sol in (pooled, fed):
        np.testing.assert_allclose(sol.targets, expected, rtol=0, atol=1e-9)
        assert sol.spec == [f"a=q{q:g}", f"b=q{q:g}"]


def test_quantile_bracket_expansion() -> None:
    # A bad starting bracket (mean/std far from the data) must still find numpy's inverted-cdf quantile.
    r = np.array([[7.0], [1.0], [4.0], [4.0], [9.0]])
    s = Samples(r)
    for q in (0.1, 0.4, 0.5, 0.9):
        want = np.quantile(r[:, 0], q, method="inverted_cdf")
        for mean, std in ((1e3, 1e-3), (-1e3, 0.0), (5.0, 100.0)):
            assert quantile(s, 0, q, 5.0, mean, std) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # values 0, 1, 2, 3 with weights 1, 2, 3, 4: total 10, cumulative weights 1, 3, 6, 10;
        # q-quantile = smallest value whose cumulative weight >= 10 q
        (0.05, 0.0),  # 0.5 <= 1
        (0.25, 1.0),  # 2.5 <= 3
        (0.5, 2.0),  # 5 <= 6
        (0.65, 3.0),  # 6.5 > 6
        (0.95, 3.0),
    ],
)
def test_weighted_quantile(q: float, expected: float) -> None:
    r = np.array([[3.0], [0.0], [2.0], [1.0]])
    w = np.array([4.0, 1.0, 3.0, 2.0])
    assert np.quantile(r[:, 0], q, method="inverted_cdf", weights=w) == expected  # numpy agrees
    pooled = solve(r, f"a=q{q}", ["a"], weights=w)
    fed = solve_palette(Federation([Samples(r[:1], w[:1]), Samples(r[1:], w[1:])]), parse_targets(f"a=q{q}", ["a"]), ["a"])
    for sol in (pooled, fed):
        assert sol.targets[0] == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- 8. parse_targets


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("c=0.9", "is not an objective"),
        ("a=0.9,a=0.8", "given twice"),
        ("a0.9", "expected name=value"),
        ("a=", "expected name=value"),
        ("=0.9", "expected name=value"),
        ("a=abc", "is not a number"),
        ("a=q", "is not a number"),
        ("a=0.9x", "is not a number"),
        ("a=nan", "must be finite"),
        ("a=+inf", "must be finite"),
        ("a=q0", "strictly between 0 and 1"),
        ("a=q1", "strictly between 0 and 1"),
        ("a=q1.5", "strictly between 0 and 1"),
        ("a=q-0.2", "strictly between 0 and 1"),
        ("", "none given"),
        (" , ,", "none given"),
    ],
)
def test_parse_targets_errors(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_targets(spec, ["a", "b"])


def test_parse_targets_valid() -> None:
    names = ["a", "b", "c"]
    assert parse_targets("a=0.9", names) == [Target("a", "absolute", 0.9)]
    assert parse_targets("a=+0.1", names) == [Target("a", "improvement", 0.1)]
    assert parse_targets("a=-0.1", names) == [Target("a", "improvement", -0.1)]
    assert parse_targets("a=q0.5", names) == [Target("a", "quantile", 0.5)]
    assert parse_targets("a=Q0.5", names) == [Target("a", "quantile", 0.5)]
    got = parse_targets("  b = +0.02 ,c=q0.7,  a = 1e-1 ,", names)
    assert got == [Target("b", "improvement", 0.02), Target("c", "quantile", 0.7), Target("a", "absolute", 0.1)]
    assert [str(t) for t in got] == ["b=+0.02", "c=q0.7", "a=0.1"]


# ---------------------------------------------------------------- 9. property: strictly feasible targets are met


@st.composite
def strictly_feasible_problem(draw: st.DrawFn) -> tuple[Array, Array]:
    """Rewards on a 1/8 grid (ties, constant values allowed) and targets a convex combination minus a slack.

    The slack (0.05 std + 0.01, up to 3x that) keeps the needed tilt well under the cap: with p = sum a_i r_i,
    g(lambda) >= sum_m nu_m (p_m - c_m) / std_m - KL(a || p0) >= 0.05 sum nu - log n, so sum nu <= 20 log n.
    """
    num_values = draw(st.integers(1, 3))
    n = draw(st.integers(2, 25))
    grid = st.integers(-40, 40).map(lambda k: k / 8)
    rewards = np.array(draw(st.lists(st.lists(grid, min_size=num_values, max_size=num_values), min_size=n, max_size=n)))
    mix = np.array(draw(st.lists(st.integers(0, 10), min_size=n, max_size=n)), dtype=np.float64)
    if mix.sum() == 0:
        mix[draw(st.integers(0, n - 1))] = 1.0
    point = (mix / mix.sum()) @ rewards
    slack = (0.05 * rewards.std(axis=0) + 0.01) * np.array(
        draw(st.lists(st.floats(1.0, 3.0), min_size=num_values, max_size=num_values))
    )
    c = point - slack
    keep = np.array(draw(st.lists(st.booleans(), min_size=num_values, max_size=num_values)))
    keep[draw(st.integers(0, num_values - 1))] = True
    return rewards, np.where(keep, c, -np.inf)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(strictly_feasible_problem())
def test_strictly_feasible_targets_are_met(problem: tuple[Array, Array]) -> None:
    rewards, c = problem
    names = [f"v{m}" for m in range(rewards.shape[1])]
    assert feasible_by_lp(rewards, c)
    sol = solve_palette(Samples(rewards), absolute_targets(c, names), names)
    assert sol.feasible, sol.reason
    act = np.isfinite(c)
    scale = np.where(sol.reference_std > 0, sol.reference_std, 1.0)  # the solver's units (1 for a constant value)
    assert np.all(sol.lam >= 0) and np.all(sol.lam[~act] == 0)
    assert np.all(sol.predicted[act] >= c[act] - FEASIBILITY_TOL * scale[act])
    assert math.isfinite(sol.kl) and sol.kl >= 0.0


# ---------------------------------------------------------------- 10. what a server can learn from the answers (docs/palette.md)
#
# The client side here is `Samples`: what each client holds in process (firm.palette.sampling) and
# what a Flower node answers with (firm.engines.flower.palette.node_reply). The "server" below sees
# only the answers, and asks questions of its own choosing, as the protocol lets it.


def _kth_smallest_by_counts(client: Samples, value: int, k: int, width: float) -> tuple[float, int]:
    """The k-th smallest reward `value` of the client, from `count_at_most` answers alone; and how many questions it took."""
    questions = 0

    def count(threshold: float) -> float:
        nonlocal questions
        questions += 1
        return client.count_at_most(value, threshold)

    lo, hi = -1.0, 1.0
    while count(lo) >= k:  # bracket: fewer than k samples at or below lo, at least k at or below hi
        lo *= 2.0
    while count(hi) < k:
        hi *= 2.0
    while hi - lo > width:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if count(mid) >= k else (mid, hi)
    return hi, questions


def test_a_server_recovers_every_reward_value_of_a_client_from_count_answers_alone() -> None:
    """count_at_most at server-chosen thresholds is a comparison oracle: bisection finds each sample to any precision."""
    rewards = np.random.default_rng(7).uniform(-3.0, 5.0, size=(24, 2))
    client = Samples(rewards)
    n = round(client.count_at_most(0, math.inf))  # the client's number of samples, first
    assert n == 24
    found, questions = zip(*(_kth_smallest_by_counts(client, 0, k, 1e-7) for k in range(1, n + 1)), strict=True)
    assert np.abs(np.array(found) - np.sort(rewards[:, 0])).max() < 1e-6  # every value of objective 0, sorted
    assert sum(questions) < n * 40  # about log2(8 / 1e-7) = 27 questions per value, plus the bracket


def test_the_tilt_statistics_reveal_max_lambda_r_the_top_samples_rewards_and_the_moments() -> None:
    rewards = np.random.default_rng(8).uniform(0.0, 1.0, size=(30, 3))
    client = Samples(rewards)
    center = rewards.mean(axis=0) + 0.1  # whatever centre the server sends
    u = np.array([0.2, 0.5, 0.3])
    # the shift is the client's largest u^T (r_i - centre): max_i u^T r_i, exactly, at any direction u
    assert client.stats(u, center).shift + u @ center == pytest.approx((rewards @ u).max(), abs=1e-12)
    # a hard tilt along u puts all the weight on the top sample: its whole reward vector comes back
    combined = np.sort(rewards @ u)
    hard = client.stats((60.0 / (combined[-1] - combined[-2])) * u, center)  # the runner-up's weight: exp(-60)
    np.testing.assert_allclose(hard.mean + center, rewards[np.argmax(rewards @ u)], rtol=0, atol=1e-9)
    # lambda = 0: the client's number of samples, mean and covariance
    flat = client.stats(np.zeros(3), center)
    assert flat.total == 30
    np.testing.assert_allclose(flat.mean + center, rewards.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat.cov, np.cov(rewards.T, bias=True), rtol=0, atol=1e-12)
