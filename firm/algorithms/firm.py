"""FIRM: Federated In-client Regularized Multi-objective alignment (arXiv 2511.16992; docs/design.md sections 3-4).

Client i, every local step: per-objective gradients g_1..g_M of one rollout, Gram matrix
Q = g g^T, weights

    lambda = argmin_{lambda in Delta_M} 1/2 lambda^T Qn lambda + reg/2 ||lambda - p||^2,   Qn = Q / mean(diag Q)

and an optimizer step along d = sum_m lambda_m g_m + beta_kl grad KL. After K steps it uploads
ONE adapter delta. The server averages deltas weighted by samples and steps
theta <- theta + eta_g Deltabar.

This is the project's reading of the paper from its abstract (the full text is not available
here): the regulariser is an L2 pull towards the preference p, which makes the per-step problem
reg-strongly convex and bounds how far two clients' weights can drift apart by
||Qn_i - Qn_j|| / reg. See docs/algorithms/firm.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from firm.aggregation import RunningMean, apply_mean_delta
from firm.algorithms.protocol import ONE_ADAPTER, Aggregator, ClientUpdate, RoundShape
from firm.codec import Adapter
from firm.config import AggregationConfig, Config
from firm.local_step import LocalProblem, Timer, local_update
from firm.robust import mean_aggregator
from firm.solvers import firm_weights


@dataclass(frozen=True)
class Firm:
    anchor: tuple[float, ...]  # p, on the simplex
    reg: float
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    name: str = "firm"
    shape: ClassVar[RoundShape] = ONE_ADAPTER

    @classmethod
    def from_config(cls, config: Config) -> Firm:
        a = config.algorithm
        return cls(
            config.objectives.preference_vector,
            a.reg,
            a.local_steps,
            a.inner_epochs,
            a.optimizer,
            a.lr,
            a.server_lr,
            config.aggregation,
        )

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        """The in-client regularized weighting rule."""
        return firm_weights(gram, torch.tensor(self.anchor, dtype=gram.dtype), self.reg)

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate:
        result = local_update(
            params, sample_problem, self.weights, self.local_steps, self.inner_epochs, self.optimizer, self.lr, timer
        )
        return ClientUpdate([result.delta], result.num_samples, result.mean_weights, result.steps)

    def new_aggregator(self) -> RunningMean:
        return mean_aggregator(self.aggregation)

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, RunningMean)
        return apply_mean_delta(global_adapter, aggregator, self.server_lr)
