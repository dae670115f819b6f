"""Weighting rules: (gram [M, M], anchor [M], reg) -> weights on the simplex (docs/design.md section 3).

Every rule maps the Gram matrix of the M per-objective gradients to objective weights lambda in
the probability simplex. They are the one seam between FIRM and its in-client baselines.
"""

from firm.solvers.min_norm import min_norm_weights
from firm.solvers.regularized import firm_weights
from firm.solvers.simplex_qp import project_to_simplex, solve_simplex_qp

__all__ = ["firm_weights", "min_norm_weights", "project_to_simplex", "solve_simplex_qp"]
