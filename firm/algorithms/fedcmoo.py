"""FedCMOO: communication-efficient federated multi-objective optimisation (Askin et al., AISTATS 2025).

Two round trips per round (docs/design.md section 4.5):

1. Probe. Every sampled client takes ONE rollout batch at the round's global adapter, computes its
   M per-objective gradients g_{i,m} ([M, d], each including the KL term as everywhere here) and
   uploads them compressed: top-k sparsification per objective, with k chosen so the M compressed
   gradients carry about `compression` x (one adapter's bytes) of values and indices
   (k = floor(c d / (2 M)): a kept entry costs a float32 value and an int32 index).
2. Plan. The server averages the decompressed gradients over clients (sample-weighted),
   estimates the Gram matrix Q = gbar gbar^T and finds the weights by projected gradient descent
   on the simplex, warm-started from the previous round's weights (the paper's solver; a fixed
   number of iterations, so it is approximate where the exact solvers are not), and broadcasts them.
   With preference steering off (`fedcmoo.steering`), the problem is the min-norm one;
   with `algorithm.reg > 0` and `fedcmoo.steering = true` it is FIRM's regularised problem
   (anchor p), the preference-steered variant.
3. Local steps. Each client runs K local steps with those FIXED weights (one backward per step,
   like FedAvg) and uploads one adapter delta; the server averages as FedAvg does.

Bytes: upload = compressed gradients + one delta; download = the adapter + the weights.
Deliberate departures: top-k is the compressor implemented (the paper also uses randomized
low-rank sketches); the probe uses one rollout batch (B x G samples) per client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from firm.aggregation import RunningMean, apply_mean_delta
from firm.algorithms.protocol import Aggregator, ClientUpdate, RoundShape, ServerState
from firm.codec import Adapter
from firm.compression import topk_compress, topk_decompress
from firm.config import Config
from firm.local_step import LocalProblem, Timer, local_update
from firm.solvers import project_to_simplex

PROBE_STEP = 1_000_000
"""Stream index of the probe rollout (disjoint from the local steps 0..K-1)."""

PG_ITERATIONS = 50
"""Projected-gradient iterations of the server's weight solve."""


def check_probe(uploads: Sequence[Adapter], num_objectives: int, size: int, k: int | None = None) -> str | None:
    """Why a client's probe cannot be averaged (None if it can): it must be what `client_probe` sends.

    One payload of M pairs `values_m` [k] float32, `indices_m` [k] int32 (k as the server expects,
    when given), the indices strictly increasing inside 0..size-1, the values finite. Unchecked, a
    negative index would wrap onto another coordinate in `topk_decompress`, a large one would crash
    the server, and a repeated one would count as one entry.
    """
    if len(uploads) != 1:
        return f"rejected: {len(uploads)} probe payloads, expected 1"
    (probe,) = uploads
    names = {f"{part}_{m}" for m in range(num_objectives) for part in ("values", "indices")}
    if probe.keys() != names:
        missing, extra = sorted(names - probe.keys()), sorted(probe.keys() - names)
        return f"rejected: probe tensor names differ (missing {missing[:2]}, unexpected {extra[:2]})"
    for m in range(num_objectives):
        values, indices = probe[f"values_{m}"], probe[f"indices_{m}"]
        if values.dtype != torch.float32 or indices.dtype != torch.int32:
            return f"rejected: probe values_{m} / indices_{m} are {values.dtype} / {indices.dtype}, expected float32 / int32"
        n = values.numel()
        if values.dim() != 1 or indices.shape != values.shape or not 1 <= n <= size or (k is not None and n != k):
            expected = f"[{k}]" if k is not None else f"[k], 1 <= k <= {size}"
            return f"rejected: probe values_{m} / indices_{m} have shapes {tuple(values.shape)} / {tuple(indices.shape)}, expected {expected}"
        idx = indices.long()
        if int(idx[0]) < 0 or int(idx[-1]) >= size or not bool((idx[1:] > idx[:-1]).all()):
            return f"rejected: probe indices_{m} are not strictly increasing inside 0..{size - 1}"
        if not bool(torch.isfinite(values).all()):
            return f"rejected: probe values_{m} has NaN or Inf values"
    return None


class ProbeMean:
    """Sample-weighted mean of the clients' decompressed per-objective gradients, [M, d] float64."""

    def __init__(self, num_objectives: int, size: int) -> None:
        self.sum = torch.zeros(num_objectives, size, dtype=torch.float64)
        self.total = 0.0

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        (probe,) = [uploads] if isinstance(uploads, dict) else list(uploads)
        for m in range(self.sum.shape[0]):
            self.sum[m] += weight * topk_decompress(probe[f"values_{m}"], probe[f"indices_{m}"], self.sum.shape[1])
        self.total += weight

    def mean(self) -> torch.Tensor:
        return self.sum / self.total


@dataclass
class FedCmoo:
    num_objectives: int
    preference: tuple[float, ...]
    local_steps: int
    inner_epochs: int
    optimizer: str
    lr: float
    server_lr: float
    compression: float
    steering_reg: float
    name: str = "fedcmoo"
    shape: ClassVar[RoundShape] = RoundShape(probes=True)

    @property
    def uses_preference(self) -> bool:
        """Only the steered variant reads p (its anchor and first warm start); the paper's min-norm solve
        starts from uniform weights and trains the same at every p."""
        return self.steering_reg > 0

    @classmethod
    def from_config(cls, config: Config) -> FedCmoo:
        a = config.algorithm
        return cls(
            config.num_objectives,
            config.objectives.preference_vector,
            a.local_steps,
            a.inner_epochs,
            a.optimizer,
            a.lr,
            a.server_lr,
            config.fedcmoo.compression,
            a.reg if config.fedcmoo.steering else 0.0,
        )

    # ---- round trip 1: probe -> plan
    def client_probe(
        self, params: dict[str, torch.nn.Parameter], sample_problem: Callable[[int], LocalProblem], client_state: dict[str, Any]
    ) -> ClientUpdate:
        problem = sample_problem(PROBE_STEP)
        grads = problem.objective_gradients().detach().to("cpu", torch.float32)  # [M, d]
        k = self.probe_k(grads.shape[1])
        payload: Adapter = {}
        for m in range(self.num_objectives):
            compressed = topk_compress(grads[m], k)
            payload[f"values_{m}"] = compressed["values"]
            payload[f"indices_{m}"] = compressed["indices"]
        return ClientUpdate([payload], problem.num_samples, [1.0 / self.num_objectives] * self.num_objectives)

    def probe_k(self, size: int) -> int:
        """Entries kept per objective of a probe of a d = `size` adapter: floor(c d / (2 M)), at least 1, at most d."""
        return max(1, min(math.floor(self.compression * size / (2 * self.num_objectives)), size))

    def check_probe(self, uploads: Sequence[Adapter], size: int) -> str | None:
        """Why this probe cannot be averaged (None if it can); see `check_probe`."""
        return check_probe(uploads, self.num_objectives, size, self.probe_k(size))

    def new_probe_aggregator(self, size: int) -> ProbeMean:
        return ProbeMean(self.num_objectives, size)

    def server_plan(self, probes: ProbeMean, state: ServerState) -> tuple[Adapter, ServerState]:
        """Weights from the estimated Gram matrix by projected gradient, warm-started from the previous
        round's weights (`state["weights"]`; in round 1 the preference when steered, else uniform weights,
        so the unsteered solve never reads p); the plan broadcasts them as a tensor, the new state keeps
        them for the next round."""
        g = probes.mean()  # [M, d]
        gram = g @ g.T  # [M, M]
        scale = float(gram.diagonal().mean())
        q = gram / scale if scale > 0 else torch.zeros_like(gram)
        anchor = torch.tensor(self.preference, dtype=torch.float64)
        reg = self.steering_reg
        start = anchor if reg > 0 else torch.full_like(anchor, 1.0 / self.num_objectives)
        w = state.get("weights", start).clone()
        step = 1.0 / (float(torch.linalg.eigvalsh(q)[-1]) + reg + 1e-12)
        for _ in range(PG_ITERATIONS):
            w = torch.from_numpy(project_to_simplex((w - step * (q @ w + reg * (w - anchor))).numpy()))
        return {"weights": w.to(torch.float32)}, {**state, "weights": w}

    # ---- round trip 2: local steps with the server's weights
    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
        plan: Adapter | None = None,
    ) -> ClientUpdate:
        if plan is None:
            raise ValueError("fedcmoo's local steps need the server's weights from the probe round trip")
        weights = plan["weights"].to(torch.float64)
        result = local_update(
            params, sample_problem, weights, self.local_steps, self.inner_epochs, self.optimizer, self.lr, timer
        )
        return ClientUpdate([result.delta], result.num_samples, result.mean_weights, result.steps)

    def new_aggregator(self) -> RunningMean:
        return RunningMean()

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, RunningMean)
        return apply_mean_delta(global_adapter, aggregator, self.server_lr)
