"""MGDA min-norm weights (Desideri 2012; Sener and Koltun 2018), docs/design.md section 3.2.

    weights = argmin_{w in Delta_M} w^T Q w,   Q[m, k] = g_m . g_k

The combined direction sum_m w_m g_m is the minimum-norm point of the convex hull of the
per-objective gradients: a common descent direction, zero exactly at Pareto-stationary points.

M = 2 closed form (w, 1 - w), from d/dw of w^2 Q11 + 2 w (1 - w) Q12 + (1 - w)^2 Q22 = 0:
    w = clip_[0,1]( (Q22 - Q12) / (Q11 - 2 Q12 + Q22) )
The denominator is ||g1 - g2||^2; when it is 0 the gradients are equal and every w is optimal.

Deliberate choices: all-zero gradients (trace 0) give uniform weights, as do equal gradients at
M = 2, since every point of the simplex is then optimal and uniform is the unbiased pick.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import numpy.typing as npt
import torch

from firm.solvers._convert import check_gram, like, to_numpy
from firm.solvers.simplex_qp import solve_simplex_qp


@overload
def min_norm_weights(gram: torch.Tensor) -> torch.Tensor: ...
@overload
def min_norm_weights(gram: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
def min_norm_weights(gram: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float64] | torch.Tensor:
    """Minimum-norm convex combination weights of M gradients given their Gram matrix.

    Args:
        gram: [M, M] Gram matrix of the per-objective gradients (numpy array or torch tensor).

    Returns:
        [M] weights on the simplex, of the same kind (numpy / torch, device) as `gram`.
    """
    q = to_numpy(gram)
    check_gram(q)
    m = q.shape[0]
    if np.trace(q) <= 0.0:
        return like(np.full(m, 1.0 / m), gram)
    if m == 2:
        denom = q[0, 0] - 2.0 * q[0, 1] + q[1, 1]
        w = 0.5 if denom <= 1e-12 * np.trace(q) else float(np.clip((q[1, 1] - q[0, 1]) / denom, 0.0, 1.0))
        return like(np.array([w, 1.0 - w]), gram)
    # The minimiser is invariant to scaling Q; solving on Q / mean(diag Q) keeps tolerances meaningful.
    return like(solve_simplex_qp(q / np.mean(np.diag(q)), np.zeros(m)), gram)
