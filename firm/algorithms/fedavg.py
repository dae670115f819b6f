"""FedAvg with fixed linear scalarization (McMahan et al. 2017; docs/design.md sections 3-4).

Every client runs K local steps on the preference-weighted loss sum_m p_m L_m + beta_kl KL
(lambda = p, never solved for), uploads one delta, and the server averages deltas weighted by
samples. With fixed weights the M per-objective gradients are never needed: each step is one
backward pass of the weighted loss. This is the baseline FIRM must beat at equal communication.
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


@dataclass(frozen=True)
class FedAvg:
    preference: tuple[float, ...]  # p = the fixed weights
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    name: str = "fedavg"
    shape: ClassVar[RoundShape] = ONE_ADAPTER
    uses_preference: ClassVar[bool] = True  # lambda = p

    @classmethod
    def from_config(cls, config: Config) -> FedAvg:
        a = config.algorithm
        return cls(
            config.objectives.preference_vector, a.local_steps, a.inner_epochs, a.optimizer, a.lr, a.server_lr, config.aggregation
        )

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate:
        fixed = torch.tensor(self.preference, dtype=torch.float64)
        result = local_update(params, sample_problem, fixed, self.local_steps, self.inner_epochs, self.optimizer, self.lr, timer)
        return ClientUpdate([result.delta], result.num_samples, result.mean_weights, result.steps)

    def new_aggregator(self) -> RunningMean:
        return mean_aggregator(self.aggregation)

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, RunningMean)
        return apply_mean_delta(global_adapter, aggregator, self.server_lr)
