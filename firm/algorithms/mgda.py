"""Federated MGDA: in-client min-norm weights, unregularized (Desideri 2012; docs/design.md sections 3-4).

The ablation of FIRM with reg = 0: every local step weights the objectives by the min-norm point
of the convex hull of their gradients, lambda = argmin_{lambda in Delta} lambda^T Q lambda, which
ignores the preference p. Clients with different data can land on very different weights (no
strong convexity bounds the drift), which is what FIRM's regulariser is for.
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
from firm.solvers import min_norm_weights


@dataclass(frozen=True)
class Mgda:
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    name: str = "mgda"
    shape: ClassVar[RoundShape] = ONE_ADAPTER
    uses_preference: ClassVar[bool] = False  # min-norm weights never read p: a sweep runs it once per seed

    @classmethod
    def from_config(cls, config: Config) -> Mgda:
        a = config.algorithm
        return cls(a.local_steps, a.inner_epochs, a.optimizer, a.lr, a.server_lr, config.aggregation)

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return min_norm_weights(gram)

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
