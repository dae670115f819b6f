"""The MAP dual: value targets -> tilt weights lambda >= 0, or a proof that the targets are out of reach.

MAP (Wang et al., "MAP: Multi-Human-Value Alignment Palette", arXiv 2410.19198, ICLR 2025) asks
for the policy closest in KL to the reference p0 whose expected rewards meet the targets c:

    min_p  KL(p || p0)   s.t.   E_p[r_m] >= c_m,  m = 1..M.

The solution is the reference tilted by the rewards, p_lambda(y) ∝ p0(y) exp(lambda^T r(y)), with
lambda the minimiser of the convex dual

    g(lambda) = log E_p0[exp(lambda^T r)] - lambda^T c,     lambda >= 0.

On n reward samples r_i ~ p0 (weights w_i, 1 by default) E_p0 becomes the sample mean, as in
MAP's Monte Carlo estimate, so the tilted distribution is the reweighting q_i ∝ w_i exp(lambda^T r_i):

    grad g = E_q[r] - c,   hess g = Cov_q[r],   KL(q || p0) = lambda^T E_q[r] - log E_p0[exp(lambda^T r)].

Everything the solver needs at a given lambda is a sum over samples (`TiltStats`), so clients can
compute it on their own samples and the server can add the sums up (firm.palette.federated): the
solve works from sums, not from the samples. The same holds for quantile targets (counts below a
threshold). The sums are not private: a server that chooses its questions learns rewards from
them (firm.palette.federated).

Solver: L-BFGS-B (scipy) on lambda in units of each value's reference standard deviation, with
explicit tolerances, then a KKT check; not MAP's fixed number of Adam steps.

Feasibility: the targets are reachable by reweighting the samples exactly when some distribution
over them has mean >= c. If they are, the dual has a finite minimiser and the KKT conditions
certify it: E_q[r] >= c - tol, and lambda_m > 0 only where E_q[r_m] = c_m. If they are not, the
dual is unbounded below along a direction u >= 0 with max_i u^T r_i < u^T c (a hyperplane that
separates the samples from the target orthant); the solver runs to its lambda cap and the
certificate is checked with the largest u^T r_i, which the tilt statistics carry anyway.

Departure from MAP: lambda is capped (`MAX_LAMBDA` reference standard deviations per unit of reward)
so an infeasible palette ends with a certificate instead of overflowing. A target exactly at the
edge of what the samples reach (met only by putting all weight on the extreme samples) is reached
in the limit: it counts as met when the capped tilt comes within FEASIBILITY_TOL of it, and as
infeasible otherwise, with the shortfall in the message.

Numerics: the statistics are taken around the reference mean (the server sends it with lambda),
so rewards far from 0 (say 1e4 +- 1) do not lose the dual's precision to cancellation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize

from firm.palette.targets import Target

MAX_LAMBDA = 1e4
"""Cap on each lambda_m, in units of 1 / (reference std of value m). The statistics are a stable log-sum-exp, so the
cap can be high: a target must come within about 1/MAX_LAMBDA std of the edge of the samples to be cut off by it."""

DEFAULT_TOL = 1e-9
"""L-BFGS-B's tolerance on the projected dual gradient E_q[r] - c, in units of each value's reference std."""

FEASIBILITY_TOL = 1e-6
"""A target counts as met when E_q[r_m] >= c_m - FEASIBILITY_TOL * std_m."""

KKT_TOL = 1e-6
"""A feasible solution must also be optimal: its projected dual gradient (std units) at most this; else restart."""

RESTARTS = 5
"""Warm restarts of L-BFGS-B when it stops early (its ftol test) with the KKT residual above KKT_TOL."""


class PaletteInfeasible(ValueError):
    """The targets cannot be met by reweighting the reference's samples; raised before any training."""


class PaletteSolveError(RuntimeError):
    """The solver stopped with the targets unmet and no proof of infeasibility (should not happen; please report)."""


@dataclass(frozen=True)
class TiltStats:
    """Sums over reward samples that determine the dual, its gradient and Hessian at one lambda.

    With a_i = lambda^T r_i and shift = max_i a_i (for a stable log-sum-exp), e_i = w_i exp(a_i - shift):
    total = sum w_i, sum_exp = sum e_i, sum_r = sum e_i r_i [M], sum_rr = sum e_i r_i r_i^T [M, M].
    `shift` is also the support value max_i lambda^T r_i used by the infeasibility certificate.
    """

    total: float
    shift: float
    sum_exp: float
    sum_r: np.ndarray  # [M]
    sum_rr: np.ndarray  # [M, M]

    @property
    def log_mean_exp(self) -> float:
        """log E_p0[exp(lambda^T r)] = shift + log(sum_exp / total)."""
        return self.shift + math.log(self.sum_exp / self.total)

    @property
    def mean(self) -> np.ndarray:
        """E_q[r], the tilted mean  # [M]."""
        return self.sum_r / self.sum_exp

    @property
    def cov(self) -> np.ndarray:
        """Cov_q[r], the dual's Hessian  # [M, M]."""
        mu = self.mean
        return self.sum_rr / self.sum_exp - np.outer(mu, mu)


def tilt_stats(
    rewards: np.ndarray, lam: np.ndarray, weights: np.ndarray | None = None, center: np.ndarray | None = None
) -> TiltStats:
    """The `TiltStats` of reward samples `rewards  # [n, M]` (sample weights `weights  # [n]`) at `lam  # [M]`.

    With `center  # [M]` the sums are taken over r_i - center: the server passes the reference mean,
    so that lambda^T r is not a difference of large numbers when rewards sit far from 0 (the dual and
    its gradient are shift-invariant up to that centre). Samples with zero weight are ignored.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        rewards, w = rewards[w > 0], w[w > 0]
    else:
        w = np.ones(len(rewards))
    if len(rewards) == 0:
        raise ValueError("tilt_stats: no reward samples with positive weight")
    if center is not None:
        rewards = rewards - np.asarray(center, dtype=np.float64)
    a = rewards @ np.asarray(lam, dtype=np.float64)  # [n]
    shift = float(a.max())
    e = w * np.exp(a - shift)  # [n]
    return TiltStats(
        total=float(w.sum()),
        shift=shift,
        sum_exp=float(e.sum()),
        sum_r=e @ rewards,
        sum_rr=(rewards * e[:, None]).T @ rewards,
    )


def merge_stats(parts: Sequence[TiltStats]) -> TiltStats:
    """The statistics of the union of the samples behind `parts` (log-sum-exp rescaling to the largest shift)."""
    if not parts:
        raise ValueError("merge_stats: nothing to merge")
    shift = max(p.shift for p in parts)
    scale = [math.exp(p.shift - shift) for p in parts]
    return TiltStats(
        total=sum(p.total for p in parts),
        shift=shift,
        sum_exp=sum(s * p.sum_exp for s, p in zip(scale, parts, strict=True)),
        sum_r=sum((s * p.sum_r for s, p in zip(scale, parts, strict=True)), np.zeros_like(parts[0].sum_r)),
        sum_rr=sum((s * p.sum_rr for s, p in zip(scale, parts, strict=True)), np.zeros_like(parts[0].sum_rr)),
    )


class RewardOracle(Protocol):
    """Where the reward samples live: one pool (`Samples`) or many clients (firm.palette.federated.Federation).

    The solver only ever asks these two questions, so it cannot tell the two apart.
    """

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        """`TiltStats` of all samples at `lam  # [M]`, of r - `center  # [M]` when given."""
        ...

    def count_at_most(self, value: int, threshold: float) -> float:
        """Total weight of the samples whose reward `value` is <= `threshold` (for quantile targets)."""
        ...


@dataclass(frozen=True)
class Samples:
    """Reward samples held in one place: `rewards  # [n, M]`, optional sample weights `weights  # [n]`."""

    rewards: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        r = np.asarray(self.rewards, dtype=np.float64)
        if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
            raise ValueError(f"reward samples must be a non-empty [n, M] array, got shape {r.shape}")
        if not np.isfinite(r).all():
            raise ValueError("reward samples contain NaN or inf")
        object.__setattr__(self, "rewards", r)
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.shape != (r.shape[0],) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError("sample weights must be [n], finite, >= 0 and not all zero")
            object.__setattr__(self, "weights", w)

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        return tilt_stats(self.rewards, lam, self.weights, center)

    def count_at_most(self, value: int, threshold: float) -> float:
        below = self.rewards[:, value] <= threshold
        return float(below.sum() if self.weights is None else self.weights[below].sum())


def quantile(oracle: RewardOracle, value: int, q: float, total: float, mean: float, std: float) -> float:
    """The reference's q-quantile of reward `value` (the smallest sample r with F(r) >= q), from counts only.

    Bisection on the threshold with `count_at_most`, bracketing outward from mean +- std, until no
    float lies between the bracket's ends or it is 1e-12 * max(1, std) wide. The result is at most
    that width above numpy's `inverted_cdf` quantile of the pooled samples (a count cannot say where
    exactly inside the bracket the sample is). `total` is the samples' total weight.
    """
    need = q * total
    step = max(std, 1e-12)
    lo, hi = mean - step, mean + step
    while oracle.count_at_most(value, lo) >= need:
        step *= 2.0
        lo = mean - step
    while oracle.count_at_most(value, hi) < need:
        step *= 2.0
        hi = mean + step
    width = 1e-12 * max(1.0, std)
    while hi - lo > width:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # no float strictly between them
            break
        if oracle.count_at_most(value, mid) >= need:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------
# The solve


@dataclass
class PaletteSolution:
    """What a palette solve reports. Vectors are in objective order; unconstrained values have target -inf."""

    names: list[str]
    targets: np.ndarray  # [M] absolute targets c (-inf where unconstrained)
    spec: list[str]  # the targets as written, e.g. ["harmlessness=0.9", "helpfulness=+0.02"]
    feasible: bool
    reason: str  # one line: why feasible / infeasible
    lam: np.ndarray  # [M] tilt weights lambda >= 0 (at the cap when infeasible)
    predicted: np.ndarray  # [M] E_q[r] under the tilted reference
    reference_mean: np.ndarray  # [M] E_p0[r]
    reference_std: np.ndarray  # [M]
    kl: float  # KL(tilted || reference) in nats
    num_samples: float
    queries: int  # tilt-statistics calls of this solve (quantile bisection counts are extra: Federation counts both)
    projected_gradient: float  # max |projected grad| at the end, in std units
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def met_by_reference(self) -> bool:
        """The reference already meets every target: lambda = 0."""
        return bool(self.feasible and not np.any(self.lam > 0))

    @property
    def preference(self) -> np.ndarray:
        """p = lambda / sum(lambda), the preference FIRM trains with  # [M]; NaN when lambda = 0."""
        total = float(self.lam.sum())
        return self.lam / total if total > 0 else np.full_like(self.lam, np.nan)

    @property
    def standardized_preference(self) -> np.ndarray:
        """p ∝ lambda_m * std_m: the weights on rewards measured in reference standard deviations  # [M]."""
        nu = self.lam * np.where(self.reference_std > 0, self.reference_std, 1.0)
        total = float(nu.sum())
        return nu / total if total > 0 else np.full_like(nu, np.nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: name-keyed dicts of floats (unconstrained targets as null)."""

        def named(v: np.ndarray) -> dict[str, float | None]:
            return {n: (float(x) if math.isfinite(float(x)) else None) for n, x in zip(self.names, v, strict=True)}

        return {
            "spec": list(self.spec),
            "targets": named(self.targets),
            "feasible": self.feasible,
            "reason": self.reason,
            "lambda": named(self.lam),
            "preference": named(self.preference),
            "standardized_preference": named(self.standardized_preference),
            "predicted": named(self.predicted),
            "reference_mean": named(self.reference_mean),
            "reference_std": named(self.reference_std),
            "kl": self.kl,
            "met_by_reference": self.met_by_reference,
            "num_samples": self.num_samples,
            "queries": self.queries,
            "projected_gradient": self.projected_gradient,
            **self.extra,
        }


class _Counted:
    """Counts the oracle's `stats` calls (each is one round of messages when the samples are federated)."""

    def __init__(self, oracle: RewardOracle) -> None:
        self.oracle, self.calls = oracle, 0

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        self.calls += 1
        return self.oracle.stats(lam, center)


def resolve_targets(
    oracle: RewardOracle,
    targets: Sequence[Target],
    names: Sequence[str],
    mean: np.ndarray,
    std: np.ndarray,
    total: float,
) -> np.ndarray:
    """Absolute targets c  # [M] (-inf where unconstrained) from targets as written, given the reference's
    mean, std and total sample weight."""
    c = np.full(len(names), -np.inf)
    for t in targets:
        m = list(names).index(t.name)
        if t.kind == "absolute":
            c[m] = t.value
        elif t.kind == "improvement":
            c[m] = mean[m] + t.value
        else:
            c[m] = quantile(oracle, m, t.value, total, float(mean[m]), float(std[m]))
    return c


def solve_palette(
    oracle: RewardOracle,
    targets: Sequence[Target],
    names: Sequence[str],
    tol: float = DEFAULT_TOL,
    max_iter: int = 1000,
) -> PaletteSolution:
    """Solve the MAP dual for lambda >= 0 from an oracle of tilt statistics (pooled or federated).

    Works in standardised units: lambda_m = nu_m / sigma_m with sigma_m the reference std of value m
    (1 when it is 0), which makes the problem well conditioned whatever the reward scales.
    """
    names = list(names)
    counted = _Counted(oracle)
    num_values = len(names)
    zero = np.zeros(num_values)
    mean = counted.stats(zero).mean  # the centre; then every sum is taken around it
    ref = counted.stats(zero, mean)
    mean = mean + ref.mean  # exact up to rounding of the centred sum (ref.mean ~ 0)
    std = np.sqrt(np.clip(np.diag(ref.cov), 0.0, None))
    scale = np.where(std > 0, std, 1.0)  # [M]
    c = resolve_targets(oracle, targets, names, mean, std, ref.total)
    active = np.isfinite(c)
    spec = [str(t) for t in targets]
    c_tilde = np.where(active, c - mean, 0.0)  # targets around the centre

    def solution(lam: np.ndarray, st: TiltStats, feasible: bool, reason: str, pg: float) -> PaletteSolution:
        kl = max(float(lam @ st.mean) - st.log_mean_exp, 0.0)  # shift-invariant: centred sums suffice
        return PaletteSolution(names, c, spec, feasible, reason, lam, mean + st.mean, mean, std, kl, ref.total, counted.calls, pg)

    gap0 = np.where(active, (mean - c) / scale, np.inf)
    if np.all(gap0 >= 0):
        return solution(zero, ref, True, "the reference already meets every target (lambda = 0)", 0.0)

    def dual(nu: np.ndarray) -> tuple[float, np.ndarray]:
        lam = nu / scale
        st = counted.stats(lam, mean)
        return st.log_mean_exp - float(lam @ c_tilde), (st.mean - c_tilde) / scale

    bounds = [(0.0, MAX_LAMBDA if a else 0.0) for a in active]
    upper = np.array([b[1] for b in bounds])

    def kkt(nu: np.ndarray) -> tuple[TiltStats, np.ndarray, np.ndarray, float]:
        """(stats, slack in std units (>= 0 where met), at-cap mask, projected-gradient residual) at nu."""
        st = counted.stats(nu / scale, mean)
        slack = np.where(active, (st.mean - c_tilde) / scale, np.inf)  # = the dual gradient where active
        grad = np.where(active, slack, 0.0)
        at_cap = active & (nu >= upper * (1 - 1e-9))
        # residual of the bound-constrained problem: grad where 0 < nu < cap, its wrong-signed part at a bound
        proj = np.where(nu > 0, grad, np.minimum(grad, 0.0))
        return st, slack, at_cap, float(np.abs(np.where(at_cap, np.maximum(grad, 0.0), proj)).max())

    nu = zero
    for _ in range(1 + RESTARTS):  # L-BFGS-B may stop on its relative-reduction test first: restart warm
        result = minimize(
            dual,
            nu,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-15, "maxcor": 20},
        )
        nu = np.clip(result.x, 0.0, upper)
        st, slack, at_cap, pg = kkt(nu)
        if pg <= KKT_TOL:
            break
    lam = nu / scale
    if np.all(slack >= -FEASIBILITY_TOL) and pg <= KKT_TOL:
        return solution(lam, st, True, f"targets met by the tilted reference (L-BFGS-B: {result.message})", pg)
    # Not met: check the separating-hyperplane certificate along u = lambda (support value = st.shift).
    margin = float(lam @ c_tilde) - st.shift
    if margin > 0:
        u = lam / lam.sum()  # the separating direction, as weights on the values
        reason = (
            f"infeasible: every reference sample has {_combo(u, names)} <= {st.shift / lam.sum() + float(u @ mean):.10g}, "
            f"but the targets need at least {float(u @ c_tilde) + float(u @ mean):.10g}, so no reweighting of the samples meets them"
        )
    elif at_cap.any():
        worst = names[int(np.argmin(np.where(active, slack, np.inf)))]
        reason = (
            f"infeasible: the targets lie at the edge of what the reference's samples reach ({worst} stays "
            f"{-float(np.min(slack)):.3g} std short at the lambda cap {MAX_LAMBDA:g}/std: only the extreme samples "
            "themselves would meet them)"
        )
    else:
        raise PaletteSolveError(
            f"palette solve stopped without meeting the targets or proving them infeasible (L-BFGS-B: {result.message}; "
            f"largest shortfall {-float(np.min(slack)):.3g} std, KKT residual {pg:.3g}): please report this"
        )
    return solution(lam, st, False, reason, pg)


def _combo(lam: np.ndarray, names: Sequence[str]) -> str:
    terms = [(f"{v:.3g}*{n}" if abs(v - 1) > 1e-12 else n) for v, n in zip(lam, names, strict=True) if v > 0]
    return " + ".join(terms) if terms else "0"


def feasible_by_lp(rewards: np.ndarray, targets: np.ndarray) -> bool:
    """Independent check (tests, plots): is there a distribution q over the samples with q^T r >= c? (HiGHS LP)."""
    from scipy.optimize import linprog

    r = np.asarray(rewards, dtype=np.float64)
    active = np.isfinite(targets)
    n = len(r)
    res = linprog(
        np.zeros(n),
        A_ub=-r[:, active].T,
        b_ub=-np.asarray(targets)[active],
        A_eq=np.ones((1, n)),
        b_eq=[1.0],
        bounds=[(0, None)] * n,
        method="highs",
    )
    return bool(res.status == 0)
