"""A toy multi-objective problem with exact gradients, for tests and docs.

Objective m of client i is the quadratic f_{i,m}(theta) = 1/2 ||theta - c_{i,m}||^2, so
g_m = theta - c_{i,m} and every number of an algorithm's round can be derived by hand. It
implements the `LocalProblem` protocol, so algorithms run on it exactly as on a language model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from firm.local_step import LocalProblem


class QuadraticProblem:
    """f_m(theta) = 1/2 ||theta - targets[m]||^2 on the live parameter `theta` ([d])."""

    num_samples: int

    def __init__(self, theta: torch.nn.Parameter, targets: torch.Tensor, num_samples: int = 1) -> None:
        self.theta = theta
        self.targets = targets  # [M, d]
        self.num_samples = num_samples
        self.stats: dict[str, float | list[float]] = {}

    def objective_gradients(self) -> torch.Tensor:
        grads = self.theta.detach()[None, :] - self.targets  # [M, d]
        self.stats["loss"] = (0.5 * grads.pow(2).sum(dim=1)).tolist()
        return grads

    def combined_gradient(self, weights: torch.Tensor) -> torch.Tensor:
        grads = self.objective_gradients()
        return weights.to(grads.dtype) @ grads


def quadratic_oracle(theta: torch.nn.Parameter, targets: torch.Tensor, num_samples: int = 1) -> Callable[[int], LocalProblem]:
    """step -> the same quadratic problem (deterministic, no sampling)."""
    return lambda step: QuadraticProblem(theta, targets, num_samples)
