"""FIRM's regularized weighting rule (arXiv 2511.16992; this project's reading, docs/design.md section 3.3).

    weights = argmin_{w in Delta_M} 1/2 w^T Qn w + reg/2 ||w - anchor||^2,   Qn = Q / mean(diag(Q))

Normalising the Gram matrix by its mean diagonal makes `reg` scale-free: the same reg means the
same trade-off whether gradients have norm 1e-3 or 1e3. reg = 0 is MGDA's min-norm rule;
reg -> infinity returns the anchor (the user's preference p). The objective is reg-strongly
convex, so two clients' weights differ by at most ||Qn_i - Qn_j|| / reg: this is the bound on
client disagreement drift.

M = 2 closed form with w = (w1, 1 - w1) and a = (a1, 1 - a1); the regulariser is
reg/2 ((w1 - a1)^2 + (a1 - w1)^2) = reg (w1 - a1)^2, so the derivative
    w1 (Qn11 - 2 Qn12 + Qn22) + Qn12 - Qn22 + 2 reg (w1 - a1) = 0
gives
    w1 = clip_[0,1]( (Qn22 - Qn12 + 2 reg a1) / (Qn11 - 2 Qn12 + Qn22 + 2 reg) ),
which is docs/design.md's ((g2 - g1).g2 + 2 reg a1) / (||g1 - g2||^2 + 2 reg) on normalised gradients.
Clipping is exact for a 1-D convex problem on an interval.

Deliberate choice: an all-zero Gram matrix (no gradient signal) gives Qn = 0, hence the anchor.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import numpy.typing as npt
import torch

from firm.solvers._convert import check_gram, like, to_numpy
from firm.solvers.min_norm import min_norm_weights
from firm.solvers.simplex_qp import solve_simplex_qp


def normalized_gram(gram: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Qn = Q / mean(diag(Q)); the zero matrix when Q has no signal."""
    scale = float(np.mean(np.diag(gram)))
    return gram / scale if scale > 0.0 else np.zeros_like(gram)


@overload
def firm_weights(gram: torch.Tensor, anchor: npt.ArrayLike | torch.Tensor, reg: float) -> torch.Tensor: ...
@overload
def firm_weights(gram: npt.ArrayLike, anchor: npt.ArrayLike | torch.Tensor, reg: float) -> npt.NDArray[np.float64]: ...
def firm_weights(
    gram: npt.ArrayLike | torch.Tensor, anchor: npt.ArrayLike | torch.Tensor, reg: float
) -> npt.NDArray[np.float64] | torch.Tensor:
    """FIRM's regularized min-norm weights.

    Args:
        gram: [M, M] Gram matrix of the per-objective gradients (numpy or torch).
        anchor: [M] point of the simplex the weights are pulled towards (the preference p).
        reg: regularisation strength >= 0; 0 gives `min_norm_weights`.

    Returns:
        [M] weights on the simplex, of the same kind (numpy / torch, device) as `gram`.
    """
    q = to_numpy(gram)
    check_gram(q)
    a = to_numpy(anchor)
    m = q.shape[0]
    if a.shape != (m,):
        raise ValueError(f"anchor must have shape ({m},), got {a.shape}")
    if np.any(a < 0) or not np.isclose(a.sum(), 1.0, atol=1e-6):
        raise ValueError(f"anchor must lie on the simplex (non-negative, sum 1), got {a.tolist()}")
    if not reg >= 0.0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    if reg == 0.0:
        return min_norm_weights(gram)
    if np.isinf(reg):  # the limit reg -> infinity: fixed scalarization by the anchor
        return like(a / a.sum(), gram)
    qn = normalized_gram(q)
    if m == 2:
        denom = qn[0, 0] - 2.0 * qn[0, 1] + qn[1, 1] + 2.0 * reg
        w = float(np.clip((qn[1, 1] - qn[0, 1] + 2.0 * reg * a[0]) / denom, 0.0, 1.0))
        return like(np.array([w, 1.0 - w]), gram)
    return like(solve_simplex_qp(qn + reg * np.eye(m), reg * a), gram)
