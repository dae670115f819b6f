"""The server's update of the shared predictor: FedAvg and the adaptive federated optimisers of Reddi et al.

Every rule is a torch optimiser stepping the global weights w on the pseudo-gradient
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):

    Delta_t = w_t - sum_i (n_i / n) w_i^{t+1}            the sample-weighted mean of the clients' models
    w_{t+1} = ServerOpt(w_t, Delta_t)

- `fedavg`: SGD with lr eta_s; eta_s = 1 is exactly w_{t+1} = sum_i (n_i / n) w_i (McMahan et al. 2017);
- `fedavgm`: SGD with momentum beta1 (Hsu et al. 2019);
- `fedadam`: Adam(beta1, beta2, eps = tau);
- `fedadagrad`: Adagrad(eps = tau, initial accumulator tau^2, Reddi's v_{-1} >= tau^2).
Deviation: torch's Adam applies bias correction to m and v, which Reddi et al.'s FedAdam does not;
with beta2 = 0.99 the difference fades within a few hundred rounds and only rescales early steps.
The optimiser's state is part of the checkpoint (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Weights = dict[str, torch.Tensor]
RULES = ("fedavg", "fedavgm", "fedadam", "fedadagrad")


class ServerOptimizer:
    """Holds the global weights and steps them with the configured rule."""

    def __init__(
        self, weights: Weights, rule: str, *, lr: float, momentum: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"server rule {rule!r}; allowed: {', '.join(RULES)}")
        self.rule = rule
        self.names = sorted(weights)
        self.params = [torch.nn.Parameter(weights[n].detach().clone().float(), requires_grad=True) for n in self.names]
        self.dtypes = {n: weights[n].dtype for n in self.names}
        self.exact_mean = rule == "fedavg" and lr == 1.0
        if rule == "fedavg":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(self.params, lr=lr)
        elif rule == "fedavgm":
            self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        elif rule == "fedadam":
            self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(momentum, beta2), eps=tau)
        else:
            self.optimizer = torch.optim.Adagrad(self.params, lr=lr, eps=tau, initial_accumulator_value=tau * tau)

    @property
    def weights(self) -> Weights:
        """The current global weights (copies, in their original dtypes)."""
        return {n: p.detach().clone().to(self.dtypes[n]) for n, p in zip(self.names, self.params, strict=True)}

    def step(self, updates: Sequence[tuple[Weights, float]]) -> float:
        """Apply one round: `updates` = (client weights, n_i) pairs. Returns ||Delta_t||_2."""
        if not updates:
            raise ValueError("a server step needs at least one client update")
        total = float(sum(n for _, n in updates))
        if total <= 0:
            raise ValueError("client sample counts must sum to > 0")
        sq = 0.0
        for name, p in zip(self.names, self.params, strict=True):
            mean = sum((w[name].float() * (n / total) for w, n in updates), torch.zeros_like(p))
            p.grad = p.detach() - mean  # Delta_t
            sq += float(p.grad.pow(2).sum())
            if self.exact_mean:
                with torch.no_grad():
                    p.copy_(mean)  # w - 1 x (w - mean), assigned exactly rather than through float subtraction
        if not self.exact_mean:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sq**0.5

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a saved state; keys of `state` that went through JSON (str) are turned back into ints."""
        fixed = dict(state)
        fixed["state"] = {int(k): v for k, v in state.get("state", {}).items()}
        self.optimizer.load_state_dict(fixed)

    def set_weights(self, weights: Weights) -> None:
        with torch.no_grad():
            for name, p in zip(self.names, self.params, strict=True):
                p.copy_(weights[name].float())
