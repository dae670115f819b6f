"""Exact solver for small quadratic programs on the probability simplex.

Solves  min_{w in Delta_M}  1/2 w^T H w - b^T w  with H symmetric positive semi-definite.
Both weighting rules reduce to this form:

- MGDA min-norm:   H = gram,                 b = 0
- FIRM:            H = gram_n + reg * I,     b = reg * anchor    (constant terms dropped)

Method: enumerate supports. On a support S (the coordinates allowed to be non-zero) the
equality-constrained KKT system

    [ H_SS  1 ] [ w_S ]   [ b_S ]
    [ 1^T   0 ] [ -nu ] = [  1  ]

is linear. Every extreme point of the optimal set is the unique solution of this system for
its own support (if a direction d with H_SS d = c 1, 1^T d = 0, d != 0 existed, then d^T H d = 0,
so H d = 0, b^T d = 0 and w +- eps d would both be optimal, contradicting extremality). So the
feasible candidate with the smallest objective over all 2^M - 1 supports is an exact optimum.
That is 255 tiny solves for M = 8: well under a millisecond each, exact to machine precision,
with no iteration count or tolerance to tune. Above `MAX_EXACT_M` objectives we fall back to
projected gradient descent (accurate, not exact), which the docstring of `solve_simplex_qp` says.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

MAX_EXACT_M = 12
"""Largest M solved by exact support enumeration (2^M - 1 linear solves)."""

_FEASIBILITY_TOL = 1e-10


def _objective(h: npt.NDArray[np.float64], b: npt.NDArray[np.float64], w: npt.NDArray[np.float64]) -> float:
    return float(0.5 * w @ h @ w - b @ w)


def project_to_simplex(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Euclidean projection onto the simplex (Held, Wolfe and Crowder 1974; sort-based)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, v.size + 1)
    rho = int(np.nonzero(u - css / idx > 0)[0][-1])
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _solve_by_enumeration(h: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    m = h.shape[0]
    scale = max(float(np.abs(h).max()), float(np.abs(b).max()), np.finfo(np.float64).tiny)
    best_w: npt.NDArray[np.float64] | None = None
    best_val = np.inf
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = h[np.ix_(s, s)]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = np.append(b[s], 1.0)
            try:
                sol = np.linalg.solve(kkt, rhs)
            except np.linalg.LinAlgError:
                continue  # singular: not the support of an extreme optimum (see module docstring)
            if not np.all(np.isfinite(sol)) or np.any(sol[:size] < -_FEASIBILITY_TOL):
                continue
            w = np.zeros(m)
            w[s] = np.clip(sol[:size], 0.0, None)
            w /= w.sum()
            # KKT optimality on the simplex: the gradient r = H w - b is >= its w-average everywhere
            # (equal on the support). The first candidate that passes, smallest support first, is
            # an optimum; the test is relative to the problem's scale, so tiny gradients work too.
            r = h @ w - b
            if np.all(r >= w @ r - 1e-12 * scale):
                return w
            val = _objective(h, b, w)
            if best_w is None or val < best_val:
                best_val, best_w = val, w
    # Only reached if rounding defeats every KKT test: the feasible candidate of least objective.
    assert best_w is not None, "every vertex support has a non-singular KKT system"
    return best_w


def _solve_by_projected_gradient(
    h: npt.NDArray[np.float64], b: npt.NDArray[np.float64], iters: int = 20_000
) -> npt.NDArray[np.float64]:
    m = h.shape[0]
    step = 1.0 / max(float(np.linalg.eigvalsh(h)[-1]), 1e-12)
    w = np.full(m, 1.0 / m)
    for _ in range(iters):
        w_next = project_to_simplex(w - step * (h @ w - b))
        if np.max(np.abs(w_next - w)) < 1e-14:
            return w_next
        w = w_next
    return w


def solve_simplex_qp(h: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Minimise 1/2 w^T H w - b^T w over the probability simplex.

    Args:
        h: [M, M] symmetric positive semi-definite matrix.
        b: [M] linear term.

    Returns:
        [M] float64 weights, non-negative, summing to 1. Exact (support enumeration) for
        M <= MAX_EXACT_M; projected gradient descent above that.
    """
    h_arr = np.asarray(h, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if h_arr.ndim != 2 or h_arr.shape[0] != h_arr.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {h_arr.shape}")
    if b_arr.shape != (h_arr.shape[0],):
        raise ValueError(f"b must have shape ({h_arr.shape[0]},), got {b_arr.shape}")
    if not (np.all(np.isfinite(h_arr)) and np.all(np.isfinite(b_arr))):
        raise ValueError("H and b must be finite (a NaN or Inf gradient reached the solver)")
    h_arr = 0.5 * (h_arr + h_arr.T)
    if h_arr.shape[0] == 1:
        return np.ones(1)
    if h_arr.shape[0] <= MAX_EXACT_M:
        return _solve_by_enumeration(h_arr, b_arr)
    return _solve_by_projected_gradient(h_arr, b_arr)
