"""Weighting rules: hand-derived M = 2 and M = 3 cases, a generic QP solver on random Gram matrices, invariants.

`min_norm_weights(gram)`       = argmin_{w in Delta_M} w^T Q w
`firm_weights(gram, a, reg)`   = argmin_{w in Delta_M} 1/2 w^T Qn w + reg/2 ||w - a||^2,   Qn = Q / mean(diag Q)

The reference is cvxpy + CLARABEL (an interior-point solver) with tight tolerances. Rank-deficient
Gram matrices have a whole face of optimal weights, so the min-norm rule is compared on objective
values; FIRM with reg > 0 is strongly convex, so its weights themselves are compared too. Every
comparison is done on the normalised Gram matrix Qn, where objectives are O(1) whatever the
gradient scale, so absolute tolerances mean the same thing in every example.
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from firm.solvers import firm_weights, min_norm_weights

PROPERTY = settings(max_examples=60, deadline=None)

Array = npt.NDArray[np.float64]


# ---------------------------------------------------------------- strategies


# Non-zero entries have magnitude 1e-2..10 and the whole matrix is scaled by 1e-1..1e3, so Gram
# entries stay above ~1e-8. Smaller Gram matrices hit an absolute tie tolerance in the min-norm
# solve (see test_min_norm_tiny_gradients); that bug is pinned there, not rediscovered here.
ENTRIES = st.one_of(st.just(0.0), st.floats(1e-2, 10.0), st.floats(-10.0, -1e-2))


@st.composite
def gradients(draw: st.DrawFn, min_m: int = 1, max_m: int = 8) -> Array:
    """[M, d] per-objective gradients with d in 1..10 (rank-deficient when d < M), with exact
    duplicate rows and zero rows mixed in, at a random scale 1e-1..1e3."""
    m = draw(st.integers(min_m, max_m))
    d = draw(st.integers(1, 10))
    g = draw(arrays(np.float64, (m, d), elements=ENTRIES))
    for j in range(m):
        kind = draw(st.sampled_from(["keep", "keep", "keep", "zero", "duplicate"]))
        if kind == "zero":
            g[j] = 0.0
        elif kind == "duplicate" and j > 0:
            g[j] = g[draw(st.integers(0, j - 1))]
    return g * 10.0 ** draw(st.integers(-1, 3))


@st.composite
def simplex_points(draw: st.DrawFn, m: int) -> Array:
    """A point of Delta_M, sometimes on a face (zero coordinates) or at a vertex."""
    raw = draw(arrays(np.float64, (m,), elements=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 2.0, 7.0])))
    if raw.sum() == 0.0:
        raw[draw(st.integers(0, m - 1))] = 1.0
    return raw / raw.sum()


@st.composite
def firm_problems(draw: st.DrawFn) -> tuple[Array, Array, float]:
    """(gram, anchor, reg) with reg in 1e-2..1e2 (log-uniform)."""
    g = draw(gradients())
    anchor = draw(simplex_points(g.shape[0]))
    reg = 10.0 ** draw(st.floats(-2.0, 2.0))
    return g @ g.T, anchor, reg


# ---------------------------------------------------------------- reference solver


def normalized(gram: Array) -> Array:
    """Qn = Q / mean(diag Q); the zero matrix when there is no gradient signal."""
    scale = float(np.mean(np.diag(gram)))
    return gram / scale if scale > 0.0 else np.zeros_like(gram)


def min_norm_objective(qn: Array, w: Array) -> float:
    return float(w @ qn @ w)


def firm_objective(qn: Array, anchor: Array, reg: float, w: Array) -> float:
    return float(0.5 * w @ qn @ w + 0.5 * reg * np.sum((w - anchor) ** 2))


def reference_weights(qn: Array, anchor: Array | None = None, reg: float = 0.0) -> Array:
    """The same simplex QP solved by cvxpy + CLARABEL with tight tolerances (at 1e-12 it reports "inaccurate")."""
    m = qn.shape[0]
    w = cp.Variable(m)
    # psd_wrap: Qn = G G^T / s is PSD by construction; rounding may leave eigenvalues of -1e-17.
    objective = 0.5 * cp.quad_form(w, cp.psd_wrap(0.5 * (qn + qn.T)))
    if reg > 0.0:
        objective = objective + 0.5 * reg * cp.sum_squares(w - anchor)
    problem = cp.Problem(cp.Minimize(objective), [w >= 0, cp.sum(w) == 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500)
    assert problem.status == cp.OPTIMAL, problem.status
    # Interior-point iterates can sit 1e-12 outside the simplex: project before comparing.
    value = np.clip(np.asarray(w.value, dtype=np.float64), 0.0, None)
    return value / value.sum()


def assert_on_simplex(w: Array, atol: float = 1e-9) -> None:
    assert w.ndim == 1
    assert np.all(np.isfinite(w))
    assert np.all(w >= 0.0), w
    assert abs(float(w.sum()) - 1.0) <= atol, w.sum()


# ---------------------------------------------------------------- against the generic QP solver


@PROPERTY
@given(g=gradients())
def test_min_norm_matches_generic_qp(g: Array) -> None:
    """Min-norm weights reach the optimal value of w^T Qn w on the simplex (exactly: never worse than CLARABEL)."""
    gram = g @ g.T
    w = min_norm_weights(gram)
    assert isinstance(w, np.ndarray)
    assert_on_simplex(w)
    qn = normalized(gram)
    ours, ref = min_norm_objective(qn, w), min_norm_objective(qn, reference_weights(qn))
    assert abs(ours - ref) <= 1e-6, (ours, ref)
    # Support enumeration is exact: it may beat the interior-point answer, never lose to it. (No
    # stationarity check here: near a flat optimal face, weights whose value is optimal to 1e-12 can
    # still leave a gradient residual of 1e-6, and the value is what the rule promises.)
    assert ours <= ref + 1e-9, (ours, ref)


@PROPERTY
@given(problem=firm_problems())
def test_firm_matches_generic_qp(problem: tuple[Array, Array, float]) -> None:
    """FIRM weights match CLARABEL in objective value and, the problem being reg-strongly convex, in w."""
    gram, anchor, reg = problem
    w = firm_weights(gram, anchor, reg)
    assert isinstance(w, np.ndarray)
    assert_on_simplex(w)
    qn = normalized(gram)
    w_ref = reference_weights(qn, anchor, reg)
    ours, ref = firm_objective(qn, anchor, reg, w), firm_objective(qn, anchor, reg, w_ref)
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref)), (ours, ref)
    assert ours <= ref + 1e-9 * max(1.0, abs(ref)), (ours, ref)
    # Strong convexity: reg/2 ||w_ref - w*||^2 <= f(w_ref) - f(w*), measured up to the rounding of f
    # itself (1e-14 relative). CLARABEL stops at a gap near 1e-10, so its weights are only that
    # close: about 1e-4 at reg = 1e-2, 1e-6 at reg = 1e2.
    gap = max(ref - ours, 0.0) + 1e-14 * max(1.0, abs(ref))
    np.testing.assert_allclose(w, w_ref, rtol=0.0, atol=math.sqrt(2.0 * gap / reg))
    np.testing.assert_allclose(w, w_ref, rtol=0.0, atol=2e-4)


@PROPERTY
@given(problem=firm_problems())
def test_firm_reg_zero_is_min_norm_exactly(problem: tuple[Array, Array, float]) -> None:
    """reg = 0 is MGDA's rule, bit for bit."""
    gram, anchor, _ = problem
    np.testing.assert_array_equal(firm_weights(gram, anchor, 0.0), min_norm_weights(gram))


# ---------------------------------------------------------------- invariants


@PROPERTY
@given(problem=firm_problems(), kind=st.sampled_from(["numpy", "float64", "float32"]))
def test_weights_on_simplex_numpy_and_torch(problem: tuple[Array, Array, float], kind: str) -> None:
    """Both rules return weights on the simplex, of the caller's kind: numpy in, numpy out; tensor in, same dtype out."""
    gram, anchor, reg = problem
    if kind == "numpy":
        for w in (min_norm_weights(gram), firm_weights(gram, anchor, reg)):
            assert isinstance(w, np.ndarray) and w.dtype == np.float64
            assert_on_simplex(w)
        return
    dtype = torch.float64 if kind == "float64" else torch.float32
    gram_t, anchor_t = torch.tensor(gram, dtype=dtype), torch.tensor(anchor, dtype=dtype)
    for w_t, w_64 in (
        (min_norm_weights(gram_t), min_norm_weights(gram_t.double())),
        (firm_weights(gram_t, anchor_t, reg), firm_weights(gram_t.double(), anchor_t.double(), reg)),
    ):
        assert isinstance(w_t, torch.Tensor) and w_t.dtype == dtype and w_t.shape == (gram.shape[0],)
        # The solve runs in float64 on the same (upcast) input; the result is only cast back.
        assert isinstance(w_64, torch.Tensor)
        torch.testing.assert_close(w_t, w_64.to(dtype), rtol=0.0, atol=0.0)
        # Each float32 entry is rounded with relative error <= 2^-24, so the sum moves by <= 2^-24 < 1e-7.
        assert_on_simplex(w_t.double().numpy(), atol=1e-9 if dtype == torch.float64 else 1e-7)


@PROPERTY
@given(problem=firm_problems(), log_c=st.floats(-6.0, 6.0))
def test_firm_is_scale_invariant(problem: tuple[Array, Array, float], log_c: float) -> None:
    """firm_weights(c Q) = firm_weights(Q) for c > 0: reg means the same trade-off at any gradient scale."""
    gram, anchor, reg = problem
    np.testing.assert_allclose(firm_weights(10.0**log_c * gram, anchor, reg), firm_weights(gram, anchor, reg), atol=1e-9)


@PROPERTY
@given(problem=firm_problems())
def test_firm_huge_reg_returns_anchor(problem: tuple[Array, Array, float]) -> None:
    """reg -> infinity gives the fixed scalarization: at reg = 1e8 the weights are the anchor to 1e-6."""
    gram, anchor, _ = problem
    # The optimality condition w - a = -(Qn w - nu 1) / reg moves w by at most ~max|Qn| / reg <= M / 1e8.
    np.testing.assert_allclose(firm_weights(gram, anchor, 1e8), anchor, atol=1e-6)


@pytest.mark.parametrize("m", [1, 2, 3, 8])
def test_zero_gradients(m: int) -> None:
    """No gradient signal: min-norm gives uniform weights (every w is optimal), FIRM gives the anchor (Qn = 0)."""
    gram = np.zeros((m, m))
    anchor = np.arange(1.0, m + 1.0) / (m * (m + 1) / 2)  # (1, 2, ..., M) / sum
    np.testing.assert_allclose(min_norm_weights(gram), np.full(m, 1.0 / m), atol=1e-12)
    np.testing.assert_allclose(firm_weights(gram, anchor, 0.5), anchor, atol=1e-12)
    w = firm_weights(torch.zeros(m, m, dtype=torch.float32), torch.tensor(anchor, dtype=torch.float32), 0.5)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor(anchor, dtype=torch.float32))


# ---------------------------------------------------------------- hand-derived cases


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        # g1 = (1, 0), g2 = (0, 1): Q = I. w1 = (Q22 - Q12) / (Q11 - 2 Q12 + Q22) = (1 - 0) / (1 + 1) = 0.5.
        ([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),
        # g1 = (2, 0), g2 = (0, 1): Q = diag(4, 1). w1 = (1 - 0) / (4 + 1) = 1/5;
        # combined d = 0.2 (2, 0) + 0.8 (0, 1) = (0.4, 0.8), orthogonal to g1 - g2 = (2, -1).
        ([[2.0, 0.0], [0.0, 1.0]], [0.2, 0.8]),
        # g1 = (1, 0), g2 = (2, 0): Q = [[1, 2], [2, 4]]. w1 = (4 - 2) / (1 - 4 + 4) = 2, clipped to 1:
        # the hull is the segment from (1, 0) to (2, 0), whose min-norm point is g1.
        ([[1.0, 0.0], [2.0, 0.0]], [1.0, 0.0]),
        # g1 = (1, 0), g2 = 0: Q = diag(1, 0). w1 = (0 - 0) / (1 + 0) = 0: all weight on the zero gradient.
        ([[1.0, 0.0], [0.0, 0.0]], [0.0, 1.0]),
        # g1 = g2 = (1, 1): ||g1 - g2||^2 = 0, every w is optimal; the documented pick is uniform.
        ([[1.0, 1.0], [1.0, 1.0]], [0.5, 0.5]),
        # g1 = (1, 0), g2 = (-1, 0): opposite gradients. Q = [[1, -1], [-1, 1]]: w1 = (1 + 1) / (1 + 2 + 1) = 0.5,
        # d = 0.5 g1 + 0.5 g2 = 0 (a Pareto-stationary point).
        ([[1.0, 0.0], [-1.0, 0.0]], [0.5, 0.5]),
        # M = 3, g = e1, e2, e1 + e2: the point (w1 + w3, w2 + w3) has squared norm >= (1 + w3)^2 / 2,
        # minimal at w3 = 0 and w1 = w2: w = (0.5, 0.5, 0), value 0.5.
        ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.5, 0.5, 0.0]),
        # M = 3 orthonormal gradients: Q = I, min ||w||^2 on the simplex is uniform.
        (np.eye(3).tolist(), [1 / 3, 1 / 3, 1 / 3]),
    ],
)
def test_min_norm_by_hand(g: list[list[float]], expected: list[float]) -> None:
    """Min-norm weights for small cases derived in the comments."""
    grads = np.array(g)
    np.testing.assert_allclose(min_norm_weights(grads @ grads.T), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("g", "anchor", "reg", "expected"),
    [
        # M = 2 closed form on Qn: w1 = clip((Qn22 - Qn12 + 2 reg a1) / (Qn11 - 2 Qn12 + Qn22 + 2 reg)).
        # g = e1, e2: Q = I = Qn (mean diag 1). a = (0.8, 0.2), reg = 1: w1 = (1 - 0 + 1.6) / (1 + 1 + 2) = 0.65.
        ([[1.0, 0.0], [0.0, 1.0]], [0.8, 0.2], 1.0, [0.65, 0.35]),
        # Same, reg = 0.1: w1 = (1 + 0.16) / (2 + 0.2) = 1.16 / 2.2 = 29/55.
        ([[1.0, 0.0], [0.0, 1.0]], [0.8, 0.2], 0.1, [29 / 55, 26 / 55]),
        # g1 = (2, 0), g2 = (0, 1): Q = diag(4, 1), mean diag 2.5, Qn = diag(1.6, 0.4).
        # a = (0.5, 0.5), reg = 1: w1 = (0.4 - 0 + 1) / (1.6 + 0.4 + 2) = 1.4 / 4 = 0.35 (min-norm: 0.2).
        ([[2.0, 0.0], [0.0, 1.0]], [0.5, 0.5], 1.0, [0.35, 0.65]),
        # Same Qn, a = (0.8, 0.2), reg = 1: w1 = (0.4 + 1.6) / 4 = 0.5.
        ([[2.0, 0.0], [0.0, 1.0]], [0.8, 0.2], 1.0, [0.5, 0.5]),
        # g1 = (1, 0), g2 = (2, 0): Q = [[1, 2], [2, 4]], mean diag 2.5, Qn = [[0.4, 0.8], [0.8, 1.6]].
        # a = (0.5, 0.5), reg = 1: w1 = (1.6 - 0.8 + 1) / (0.4 - 1.6 + 1.6 + 2) = 1.8 / 2.4 = 0.75.
        ([[1.0, 0.0], [2.0, 0.0]], [0.5, 0.5], 1.0, [0.75, 0.25]),
        # Same, reg = 0.1: w1 = (0.8 + 0.1) / (0.4 + 0.2) = 1.5, clipped to 1 (the min-norm answer).
        ([[1.0, 0.0], [2.0, 0.0]], [0.5, 0.5], 0.1, [1.0, 0.0]),
        # g1 = (1, 0), g2 = 0: Q = diag(1, 0), mean diag 0.5, Qn = diag(2, 0). a = (0.5, 0.5), reg = 1:
        # w1 = (0 - 0 + 1) / (2 + 2) = 0.25, i.e. reg a1 / (1 + reg).
        ([[1.0, 0.0], [0.0, 0.0]], [0.5, 0.5], 1.0, [0.25, 0.75]),
        # g1 = g2 = (1, 1): Qn = [[1, 1], [1, 1]], w1 = (1 - 1 + 2 reg a1) / (0 + 2 reg) = a1, for any reg > 0.
        ([[1.0, 1.0], [1.0, 1.0]], [0.7, 0.3], 0.01, [0.7, 0.3]),
        # M = 3, g = e1, e2, e3: Qn = I. Stationarity w + reg (w - a) = nu 1 with sum w = 1 gives
        # nu = 1/M and w = (reg a + 1/M) / (1 + reg), interior here. a = (0.6, 0.3, 0.1), reg = 1:
        # w = (0.6 + 1/3, 0.3 + 1/3, 0.1 + 1/3) / 2.
        (np.eye(3).tolist(), [0.6, 0.3, 0.1], 1.0, [(0.6 + 1 / 3) / 2, (0.3 + 1 / 3) / 2, (0.1 + 1 / 3) / 2]),
        # M = 3, g = e1, e2, e1 + e2: Q = [[1, 0, 1], [0, 1, 1], [1, 1, 2]], mean diag 4/3, Qn = 3/4 Q.
        # a = (0, 0, 1) (a vertex), reg = 1. Guess the interior point: Qn w + reg (w - a) = nu 1.
        # By symmetry w1 = w2 = u, w3 = 1 - 2u. Qn w = 3/4 (u + 1 - 2u, u + 1 - 2u, 2u + 2 - 4u)
        # = 3/4 (1 - u, 1 - u, 2 - 2u). Rows 1 and 3: 3/4 (1 - u) + u = nu = 3/2 (1 - u) + (1 - 2u) - 1
        # => 3/4 - 3/4 u + u = 3/2 - 3/2 u - 2u => (1/4 + 7/2) u = 3/4 => u = (3/4) / (15/4) = 1/5.
        # w = (0.2, 0.2, 0.6), all positive so the KKT point is the optimum.
        ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, 1.0], 1.0, [0.2, 0.2, 0.6]),
    ],
)
def test_firm_by_hand(g: list[list[float]], anchor: list[float], reg: float, expected: list[float]) -> None:
    """FIRM weights for small cases derived in the comments."""
    grads = np.array(g)
    np.testing.assert_allclose(firm_weights(grads @ grads.T, anchor, reg), expected, atol=1e-12)


def test_firm_by_hand_torch_float32() -> None:
    """The M = 2 example through float32 tensors: the same 0.65, returned as float32."""
    w = firm_weights(torch.eye(2), torch.tensor([0.8, 0.2]), 1.0)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([0.65, 0.35]))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "gram",
    [
        np.ones((2, 3)),  # not square
        np.ones(3),  # not a matrix
        np.ones((2, 2, 2)),  # not a matrix
        np.zeros((0, 0)),  # M = 0
        np.array([[1.0, np.nan], [np.nan, 1.0]]),
        np.array([[np.inf, 0.0], [0.0, 1.0]]),
    ],
)
def test_bad_gram_raises(gram: Array) -> None:
    with pytest.raises(ValueError):
        min_norm_weights(gram)
    with pytest.raises(ValueError):
        firm_weights(gram, np.full(max(gram.shape[0], 1), 1.0 / max(gram.shape[0], 1)), 1.0)


def test_nan_gram_tensor_raises() -> None:
    gram = torch.eye(3)
    gram[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        min_norm_weights(gram)
    with pytest.raises(ValueError, match="NaN"):
        firm_weights(gram, torch.full((3,), 1 / 3), 1.0)


@pytest.mark.parametrize(
    "anchor",
    [
        [0.5, 0.5],  # wrong length for M = 3
        [0.25, 0.25, 0.25, 0.25],  # wrong length for M = 3
        [0.5, 0.6, -0.1],  # sums to 1 but negative
        [0.2, 0.2, 0.2],  # non-negative but sums to 0.6
        [0.5, 0.5, np.nan],
    ],
)
def test_bad_anchor_raises(anchor: list[float]) -> None:
    with pytest.raises(ValueError, match="anchor"):
        firm_weights(np.eye(3), anchor, 1.0)


@pytest.mark.parametrize("reg", [-1e-9, -1.0, math.nan])
def test_bad_reg_raises(reg: float) -> None:
    with pytest.raises(ValueError, match="reg"):
        firm_weights(np.eye(2), [0.5, 0.5], reg)
    with pytest.raises(ValueError, match="reg"):
        firm_weights(np.eye(3), [0.5, 0.25, 0.25], reg)


# ---------------------------------------------------------------- regressions: scale-free optimality test


def assert_kkt(qn: Array, w: Array, anchor: Array, reg: float, tol: float = 1e-9) -> None:
    """w is optimal for min 1/2 w^T Qn w + reg/2 ||w - a||^2 on the simplex iff the gradient
    r = Qn w + reg (w - a) equals nu on the support of w and is >= nu off it (nu = w . r)."""
    r = qn @ w + reg * (w - anchor)
    nu = float(w @ r)
    scale = tol * max(1.0, reg, float(np.abs(qn).max(initial=0.0)))
    assert np.all(r >= nu - scale), (r, nu)
    assert np.all(np.abs(r - nu)[w > 1e-9] <= scale), (r, nu, w)


def test_min_norm_tiny_gradients() -> None:
    """The min-norm argmin does not depend on the gradient scale, down to LoRA-sized gradients of norm 1e-7."""
    # g = e1, e2, e1 + e2 (the hand case above): w = (0.5, 0.5, 0) at every scale. At scale 1e-7 the
    # Gram entries are ~1e-14: an absolute tie tolerance once returned the first vertex tried, (1, 0, 0).
    g = 1e-7 * np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(min_norm_weights(g @ g.T), [0.5, 0.5, 0.0], atol=1e-9)


def test_firm_weights_are_stationary() -> None:
    """FIRM's optimum satisfies its KKT conditions to rounding error (found by hypothesis at normal scale)."""
    # g1 = 0.01 e1, g2 = g4 = 0, g3 = 4 e2, g5 = e2; anchor e1, reg 1. The support {1, 2, 4, 5} gives
    # an objective only 5.4e-14 above the full support's (the optimum, where w3 = 1.5e-7 > 0); choosing
    # by objective value with a tie tolerance once kept it, with weights off by 1.5e-7.
    g = np.zeros((5, 2))
    g[0, 0], g[2, 1], g[4, 1] = 0.01, 4.0, 1.0
    anchor, reg = np.eye(5)[0], 1.0
    assert_kkt(normalized(g @ g.T), firm_weights(g @ g.T, anchor, reg), anchor, reg)


@pytest.mark.parametrize("m", [2, 3])
def test_infinite_reg_is_the_anchor(m: int) -> None:
    """reg = inf is the limit "fixed scalarization": the anchor, never NaN."""
    anchor = np.arange(1.0, m + 1.0) / (m * (m + 1) / 2)
    np.testing.assert_allclose(firm_weights(np.eye(m), anchor, math.inf), anchor, atol=1e-12)
