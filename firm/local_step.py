"""The local step shared by FIRM and its in-client baselines (docs/design.md section 2), over any problem.

One local step on a client:
    1. problem = sample_problem(step)       # LM: sample B x G completions, score, advantages [B, G, M]
    2. g = problem.objective_gradients()     # [M, d] gradients of f_m = L_m + beta_kl KL
    3. gram = g g^T                          # [M, M]
    4. weights = rule(gram)                  # lambda on the simplex (section 3)
    5. d = sum_m weights_m g_m               # = sum_m weights_m grad L_m + beta_kl grad KL
    6. optimizer step on theta with d as the gradient
Steps 2-6 repeat `inner_epochs` times on the same rollout (the problem then clips the
importance ratio). With fixed weights (FedAvg) steps 2-5 collapse into ONE backward of the
weighted loss, `problem.combined_gradient(weights)`: that is exactly the cost FIRM adds.

The problem is a Protocol so the same loop runs on a language model (`firm.policy_gradient`) or
on a toy quadratic (`firm.toy`) whose numbers can be derived by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from firm.codec import Adapter

WeightingRule = Callable[[torch.Tensor], torch.Tensor]
"""gram [M, M] -> weights [M] on the simplex."""


class LocalProblem(Protocol):
    """The per-objective losses of one local step at the current parameter values."""

    num_samples: int
    """Completions (or examples) this step used: the client's aggregation weight."""
    stats: dict[str, float | list[float]]
    """What to log for this step (e.g. `reward` per objective, `kl`)."""

    def objective_gradients(self) -> torch.Tensor:
        """g [M, d]: gradients of the M objectives (each including any term common to all) at the current theta."""
        ...

    def combined_gradient(self, weights: torch.Tensor) -> torch.Tensor:
        """[d] gradient of sum_m weights_m f_m for weights on the simplex, in one backward pass."""
        ...


class Timer:
    """Wall time per named phase; synchronises CUDA so a phase is charged for its own kernels."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.totals: dict[str, float] = {}
        self._sync = device is not None and device.type == "cuda"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


@dataclass
class LocalResult:
    """What one client's K local steps produced."""

    delta: Adapter  # theta_after - theta_before, CPU tensors, same layout as the adapter
    mean_weights: list[float]  # [M] lambdabar: the mean of lambda over the local steps
    num_samples: int
    steps: list[dict[str, float | list[float]]] = field(default_factory=list)  # per-step log


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one [d] vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _assign_grad(params: list[torch.nn.Parameter], direction: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = direction[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """A fresh client optimizer (state reset every round, as in FedAvg with local Adam)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adam, sgd")


def local_update(
    params: dict[str, torch.nn.Parameter],
    sample_problem: Callable[[int], LocalProblem],
    weighting: WeightingRule | torch.Tensor,
    num_steps: int,
    inner_epochs: int,
    optimizer: str,
    lr: float,
    timer: Timer | None = None,
) -> LocalResult:
    """Run K local steps from the current values of `params` and return the delta.

    Args:
        params: the live trainable tensors (the adapter), updated in place.
        sample_problem: step index -> the problem of that step (for an LM: a fresh rollout).
        weighting: a rule gram -> weights (FIRM, MGDA), or fixed weights [M] (FedAvg: one backward).
        num_steps: K.
        inner_epochs: optimizer steps per problem (rollout reuse).
        optimizer, lr: client optimizer, reset for this call.
        timer: optional phase timer (`solve` and `step` are charged here).
    """
    timer = timer or Timer()
    plist = list(params.values())
    start = [p.detach().clone() for p in plist]
    opt = make_optimizer(optimizer, plist, lr)
    weight_sum: torch.Tensor | None = None
    num_updates, num_samples = 0, 0
    steps: list[dict[str, float | list[float]]] = []
    for step in range(num_steps):
        problem = sample_problem(step)
        num_samples += problem.num_samples
        for _ in range(inner_epochs):
            if isinstance(weighting, torch.Tensor):
                weights = weighting.detach().to("cpu", torch.float64)
                direction = problem.combined_gradient(weighting)  # [d]; the problem casts on its own device
            else:
                grads = problem.objective_gradients()  # [M, d]
                with timer.phase("solve"):
                    g64 = grads.detach().to("cpu", torch.float64)  # CPU: MPS has no float64
                    gram = g64 @ g64.T  # [M, M]
                    weights = weighting(gram).to(torch.float64)  # [M]
                    direction = weights.to(grads.device, grads.dtype) @ grads  # [d]
            with timer.phase("step"):
                opt.zero_grad(set_to_none=True)
                _assign_grad(plist, direction)
                opt.step()
            weight_sum = weights if weight_sum is None else weight_sum + weights
            num_updates += 1
            steps.append({**problem.stats, "weights": weights.tolist(), "d_norm": float(direction.norm())})
    assert weight_sum is not None, "num_steps and inner_epochs must be >= 1"
    with torch.no_grad():
        delta = {n: (p.detach() - s).to("cpu") for (n, p), s in zip(params.items(), start, strict=True)}
    return LocalResult(
        delta=delta,
        mean_weights=(weight_sum / num_updates).tolist(),
        num_samples=num_samples,
        steps=steps,
    )
