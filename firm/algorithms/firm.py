"""FIRM: Federated In-client Regularized Multi-objective alignment (arXiv 2511.16992; docs/design.md sections 3-4).

Client i, every local step: per-objective gradients g_1..g_M of one rollout, Gram matrix
Q = g g^T, weights

    lambda = argmin_{lambda in Delta_M} 1/2 lambda^T Qn lambda + reg_r/2 ||lambda - a||^2,   Qn = Q / mean(diag Q)

and an optimizer step along d = sum_m lambda_m g_m + beta_kl grad KL. After K steps it uploads
ONE adapter delta. The server averages deltas weighted by samples and steps
theta <- theta + eta_g Deltabar.

This is the project's reading of the paper from its abstract (the full text is not available
here): the regulariser is an L2 pull towards an anchor a, which makes the per-step problem
reg-strongly convex and bounds how far two clients' weights can drift apart by
||Qn_i - Qn_j|| / reg (for clients with the same anchor). The anchor and the schedule of reg are
the project's variants, not the paper's (`algorithm.anchor`, `algorithm.reg_schedule`):

    anchor = preference: a = p (the default);  uniform: a = (1/M, ..., 1/M);
    previous: a = the lambda of the client's previous optimizer step (a proximal-point step on the
    min-norm problem), carried across rounds in its client state, p the first time;
    reg_r = `scheduled_reg(...)` of round r, from reg at round 1 to reg_final at the last round.

The fixed points of each variant are derived in docs/algorithms/firm.md ("Fixed points").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from firm.aggregation import RunningMean, apply_mean_delta
from firm.algorithms.protocol import ONE_ADAPTER, ROUND_IDX, Aggregator, ClientUpdate, RoundShape
from firm.codec import Adapter
from firm.config import AggregationConfig, Config, ConfigError
from firm.local_step import LocalProblem, Timer, local_update
from firm.robust import mean_aggregator
from firm.solvers import firm_weights

LAST_WEIGHTS = "firm.last_weights"
"""Client-state key (anchor = previous): the lambda [M] of the client's last optimizer step, its next round's first anchor."""


def scheduled_reg(schedule: str, reg: float, reg_final: float, round_idx: int, rounds: int) -> float:
    """reg of round `round_idx` (1..rounds): `reg` at round 1, `reg_final` at round `rounds`.

    With t = (round_idx - 1) / (rounds - 1), clipped to [0, 1] (t = 0 in a one-round run):
        constant:     reg
        linear:       reg + (reg_final - reg) t
        cosine:       reg_final + (reg - reg_final) (1 + cos(pi t)) / 2
        exponential:  reg (reg_final / reg)^t          (geometric; reg, reg_final > 0)
    Not from the paper: the project's schedules (docs/algorithms/firm.md, "Fixed points").
    """
    t = min(max((round_idx - 1) / (rounds - 1), 0.0), 1.0) if rounds > 1 else 0.0
    if schedule == "constant":
        return reg
    if schedule == "linear":
        return reg + (reg_final - reg) * t
    if schedule == "cosine":
        return reg_final + (reg - reg_final) * (1.0 + math.cos(math.pi * t)) / 2.0
    if schedule == "exponential":
        return reg * (reg_final / reg) ** t
    raise ValueError(f"unknown reg schedule {schedule!r}; allowed: constant, linear, cosine, exponential")


def validate_config(config: Config) -> None:
    """`algorithm.reg_final` fits `algorithm.reg_schedule` (the names themselves are checked on load)."""
    a = config.algorithm
    if a.reg_schedule == "constant":
        if a.reg_final >= 0 and a.reg_final != a.reg:
            raise ConfigError(
                f"algorithm.reg_final: {a.reg_final} does nothing with algorithm.reg_schedule = 'constant'; "
                "set algorithm.reg_schedule (linear, cosine, exponential)"
            )
        return
    if not a.reg_final >= 0:
        raise ConfigError(
            f"algorithm.reg_final: the {a.reg_schedule!r} reg schedule needs the reg of the last round, >= 0; got {a.reg_final}"
        )
    if a.reg_schedule == "exponential" and not (a.reg > 0 and a.reg_final > 0):
        raise ConfigError(
            f"algorithm.reg_final: the 'exponential' reg schedule needs algorithm.reg > 0 and algorithm.reg_final > 0; "
            f"got {a.reg} and {a.reg_final} (use linear or cosine to reach 0)"
        )


@dataclass(frozen=True)
class Firm:
    anchor: tuple[float, ...]  # a on the simplex: p, or 1/M each (uniform); with previous_anchor, the client's very first anchor
    reg: float  # reg of round 1 (of every round when reg_schedule is constant)
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    previous_anchor: bool = False  # anchor = previous: each solve is pulled towards the client's last lambda
    reg_schedule: str = "constant"
    reg_final: float | None = None  # reg of the last round; None = reg
    rounds: int = 1  # R, the round at which the schedule reaches reg_final
    uses_preference: bool = True  # False with anchor = uniform: p then enters no solve (a sweep runs it once per seed)
    name: str = "firm"
    shape: ClassVar[RoundShape] = ONE_ADAPTER

    @classmethod
    def from_config(cls, config: Config) -> Firm:
        a = config.algorithm
        m = config.num_objectives
        anchor = tuple(1.0 / m for _ in range(m)) if a.anchor == "uniform" else config.objectives.preference_vector
        return cls(
            anchor,
            a.reg,
            a.local_steps,
            a.inner_epochs,
            a.optimizer,
            a.lr,
            a.server_lr,
            config.aggregation,
            previous_anchor=a.anchor == "previous",
            reg_schedule=a.reg_schedule,
            reg_final=a.reg_final if a.reg_final >= 0 else None,
            rounds=config.federation.rounds,
            uses_preference=a.anchor != "uniform",
        )

    def reg_at(self, round_idx: int) -> float:
        """reg of round `round_idx` (from 1): `scheduled_reg` from reg at round 1 to reg_final at round R."""
        final = self.reg if self.reg_final is None else self.reg_final
        return scheduled_reg(self.reg_schedule, self.reg, final, round_idx, self.rounds)

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate:
        """K local steps with FIRM's weights; the round comes from `client_state[ROUND_IDX]` (1 if absent).

        Each step's log also records the `anchor` [M] and `reg` its solve used. With the previous
        anchor the returned client state holds the last lambda (`LAST_WEIGHTS`) for the next round.
        """
        reg = self.reg_at(int(client_state.get(ROUND_IDX, 1)))
        first = client_state.get(LAST_WEIGHTS, self.anchor) if self.previous_anchor else self.anchor
        anchors = [torch.tensor(first, dtype=torch.float64)]  # anchors[k]: the anchor of the k-th solve, [M]

        def rule(gram: torch.Tensor) -> torch.Tensor:
            weights = firm_weights(gram, anchors[-1].to(gram.dtype), reg)  # [M]
            # previous: the next solve (next inner epoch or step) is pulled towards these weights
            anchors.append(weights.detach().to(torch.float64) if self.previous_anchor else anchors[-1])
            return weights

        result = local_update(params, sample_problem, rule, self.local_steps, self.inner_epochs, self.optimizer, self.lr, timer)
        for step, anchor in zip(result.steps, anchors[:-1], strict=True):
            step.update(anchor=anchor.tolist(), reg=reg)
        state = {LAST_WEIGHTS: anchors[-1].tolist()} if self.previous_anchor else {}
        return ClientUpdate([result.delta], result.num_samples, result.mean_weights, result.steps, state)

    def new_aggregator(self) -> RunningMean:
        return mean_aggregator(self.aggregation)

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, RunningMean)
        return apply_mean_delta(global_adapter, aggregator, self.server_lr)
