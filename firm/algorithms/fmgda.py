"""FMGDA / FSMGDA: federated multi-gradient descent (Yang et al., NeurIPS 2023; docs/design.md section 4.4).

Round t, client i, for each objective m = 1..M separately: start from the round's global
theta^t and run K local steps on objective m alone (weights = e_m, the KL term included as in
every objective here), giving Delta_{i,m}. The client uploads all M deltas: M times FIRM's bytes.

Server: per objective, the sample-weighted mean Deltabar_m = sum_i w_i Delta_{i,m}; the min-norm
weights of the M averaged deltas,

    lambda = argmin_{lambda in Delta_M} || sum_m lambda_m Deltabar_m ||^2

and the step theta^{t+1} = theta^t + eta_g sum_m lambda_m Deltabar_m. With stochastic local
gradients (sampled rollouts, as here) this is FSMGDA; FMGDA is the full-gradient version.

Options and deliberate choices:
- `fmgda.normalize_deltas`: solve the min-norm problem on Deltabar_m / ||Deltabar_m|| (as
  MGDA-UB style normalisation), then apply the weights to the raw Deltabar_m so the step size keeps
  the deltas' scale.
- `algorithm.reg > 0` with `fmgda.steering = true` is not part of the paper; the preference-steered
  variant here solves FIRM's regularised problem at the server instead of the plain min-norm one.
- Each objective's K steps draw their own rollouts (steps m * K .. m * K + K - 1 of the client's
  streams), so FMGDA spends M times the rollouts of FIRM per round: that is the algorithm.
- The clients' weights are one-hot per run, so each client's logged mean weights are uniform and
  `drift.weights` is 0; the server's lambda is logged as `server.weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from firm.aggregation import RunningMean
from firm.algorithms.protocol import Aggregator, ClientUpdate, RoundShape
from firm.codec import Adapter
from firm.config import Config
from firm.local_step import LocalProblem, Timer, flatten, local_update
from firm.solvers import firm_weights, min_norm_weights


class PerObjectiveMean:
    """M running means, one per objective's delta; `stats` holds the server's weights after the update."""

    def __init__(self, num_objectives: int) -> None:
        self.means = [RunningMean() for _ in range(num_objectives)]
        self.stats: dict[str, Any] = {}

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        if isinstance(uploads, dict) or len(uploads) != len(self.means):
            got = 1 if isinstance(uploads, dict) else len(uploads)
            raise ValueError(f"FMGDA expects {len(self.means)} payloads per client (one per objective), got {got}")
        for mean, delta in zip(self.means, uploads, strict=True):
            mean.add(delta, weight)

    def update_drift(self) -> float:
        """The mean over objectives of each objective's update drift."""
        return sum(m.update_drift() for m in self.means) / len(self.means)


@dataclass(frozen=True)
class Fmgda:
    num_objectives: int
    preference: tuple[float, ...]
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    normalize_deltas: bool
    steering_reg: float  # 0 = the paper's min-norm; > 0 = FIRM's regularised solve at the server
    name: str = "fmgda"

    @property
    def shape(self) -> RoundShape:
        """One trip; each client uploads its M per-objective deltas."""
        return RoundShape(uploads=self.num_objectives)

    @property
    def uses_preference(self) -> bool:
        """Only the steered variant reads p (its anchor); the paper's min-norm server solve trains the same at every p."""
        return self.steering_reg > 0

    @classmethod
    def from_config(cls, config: Config) -> Fmgda:
        a = config.algorithm
        return cls(
            config.num_objectives,
            config.objectives.preference_vector,
            a.local_steps,
            a.inner_epochs,
            a.optimizer,
            a.lr,
            a.server_lr,
            config.fmgda.normalize_deltas,
            a.reg if config.fmgda.steering else 0.0,
        )

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate:
        start = {n: p.detach().clone() for n, p in params.items()}
        uploads: list[Adapter] = []
        steps: list[dict[str, Any]] = []
        num_samples = 0
        for m in range(self.num_objectives):
            with torch.no_grad():  # every objective's run starts from the round's global adapter
                for n, p in params.items():
                    p.copy_(start[n])
            one_hot = torch.zeros(self.num_objectives, dtype=torch.float64)
            one_hot[m] = 1.0
            offset = m * self.local_steps

            def objective_problem(step: int, offset: int = offset) -> LocalProblem:
                return sample_problem(offset + step)

            result = local_update(
                params, objective_problem, one_hot, self.local_steps, self.inner_epochs, self.optimizer, self.lr, timer
            )
            uploads.append(result.delta)
            steps.extend({**s, "objective": m} for s in result.steps)
            num_samples += result.num_samples
        uniform = [1.0 / self.num_objectives] * self.num_objectives
        return ClientUpdate(uploads, num_samples // self.num_objectives, uniform, steps)

    def new_aggregator(self) -> PerObjectiveMean:
        return PerObjectiveMean(self.num_objectives)

    def server_weights(self, deltas: torch.Tensor) -> torch.Tensor:
        """deltas [M, d] (float64) -> lambda [M]: min-norm (or FIRM-steered) over the averaged deltas."""
        if self.normalize_deltas:
            norms = deltas.norm(dim=1, keepdim=True)
            deltas = deltas / torch.where(norms > 0, norms, torch.ones_like(norms))
        gram = deltas @ deltas.T  # [M, M]
        if self.steering_reg > 0:
            return firm_weights(gram, torch.tensor(self.preference, dtype=gram.dtype), self.steering_reg)
        return min_norm_weights(gram)

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, PerObjectiveMean)
        means = [m.mean() for m in aggregator.means]  # M adapters, float64
        names = list(global_adapter)
        flat = torch.stack([flatten([mean[n] for n in names]) for mean in means])  # [M, d]
        weights = self.server_weights(flat)
        aggregator.stats = {"weights": weights.tolist()}
        return {
            n: (
                t.to(torch.float64) + self.server_lr * sum(float(w) * mean[n] for w, mean in zip(weights, means, strict=True))
            ).to(t.dtype)
            for n, t in global_adapter.items()
        }
