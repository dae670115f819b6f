"""FIRM's fixed points (docs/algorithms/firm.md, "Fixed points"): with a constant reg and a full-support
anchor p, full-batch FIRM stops exactly where FedAvg(p) does, at a stationary point of sum_m p_m f_m.

On the toy f_m = 1/2 ||theta - c_m||^2 that point is theta* = sum_m p_m c_m, derived by hand; MGDA
(reg = 0) instead stops anywhere on the Pareto set (the hull of the c_m), depending on where it starts.
"""

from __future__ import annotations

import pytest
import torch

from firm.local_step import local_update
from firm.solvers import firm_weights, min_norm_weights
from firm.toy import quadratic_oracle

TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)  # c_m, M = 3


def _run(rule: object, start: list[float], steps: int = 200) -> tuple[torch.Tensor, list[float]]:
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    result = local_update({"theta": theta}, quadratic_oracle(theta, TARGETS), rule, steps, 1, "sgd", 0.5)  # type: ignore[arg-type]
    return theta.detach().clone(), result.steps[-1]["weights"]  # type: ignore[return-value]


@pytest.mark.parametrize(("reg", "steps"), [(0.3, 400), (1.0, 200), (10.0, 200)])
@pytest.mark.parametrize("p", [(1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1)])
def test_full_batch_firm_stops_at_the_p_scalarisations_stationary_point(reg: float, steps: int, p: tuple[float, ...]) -> None:
    """A small reg gets there slowly: the path first reaches the Pareto set, then slides along it to
    the p-point, as the scale-free Qn keeps lambda away from p while the gradients shrink."""
    anchor = torch.tensor(p, dtype=torch.float64)
    expected = anchor @ TARGETS  # theta* = sum_m p_m c_m, where sum_m p_m (theta - c_m) = 0
    for start in ([0.0, 0.0, 0.0], [5.0, -3.0, 2.0]):
        theta, weights = _run(lambda gram: firm_weights(gram, anchor, reg), start, steps)
        assert torch.allclose(theta, expected, atol=1e-6), (start, theta, expected)
        assert torch.allclose(torch.tensor(weights, dtype=torch.float64), anchor, atol=1e-4)  # lambda = p there


def test_fedavg_with_p_stops_at_the_same_point() -> None:
    anchor = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    theta, _ = _run(anchor, [5.0, -3.0, 2.0])
    assert torch.allclose(theta, anchor @ TARGETS, atol=1e-6)


def test_mgda_stops_on_the_pareto_set_at_a_start_dependent_point() -> None:
    """reg = 0 is different: every Pareto-stationary point (a point of the hull of the c_m) is a fixed point."""
    ends = [_run(min_norm_weights, start)[0] for start in ([5.0, -3.0, 2.0], [-2.0, 4.0, 4.0])]
    for theta in ends:
        # stationary: some lambda on the simplex has sum_m lambda_m (theta - c_m) = 0, i.e. theta in the hull
        w = min_norm_weights((theta[None] - TARGETS) @ (theta[None] - TARGETS).T)
        assert float((w @ (theta[None] - TARGETS)).norm()) < 1e-4
    assert float((ends[0] - ends[1]).norm()) > 0.1  # two starts, two different end points
