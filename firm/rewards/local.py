"""A client's local training of the preference predictor, and the evaluation of a predictor on groups.

`local_update` (what a client runs in a round, on its own group's items only): load the global
weights, take S AdamW steps on episodes of its group, return the new weights and its sample count
(the items it holds, FedAvg's weight n_i). S = ceil(epochs x N / (E x Q)): `epochs` passes over
the group's N items, E episodes of Q queries per step. The client's optimiser is created afresh
each round (its state is not carried across rounds, as in FedAvg); every draw comes from
(seed, round, client) streams, so the result does not depend on which engine runs it.

`train_pooled` is the same steps on episodes of groups drawn in proportion to their sizes: the
centralized reference on the pooled data, GPO still conditioned on each episode's own group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from firm.rewards.episodes import Batch, GroupData, draw_episode, query_batches, stack
from firm.rewards.metrics import group_alignment, item_alignment, mae
from firm.rewards.predictor import predictor_loss

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepPlan:
    """How much a client trains per round."""

    epochs: float
    episodes_per_step: int
    context: int
    queries: int
    lr: float
    weight_decay: float = 0.0

    def steps(self, items: int) -> int:
        """S = ceil(epochs x N / (E x Q)), at least 1."""
        return max(1, math.ceil(self.epochs * items / (self.episodes_per_step * self.queries)))


@dataclass(frozen=True)
class LocalResult:
    weights: Weights  # the client's model after its steps, on the CPU
    samples: int  # n_i: the group's training items (FedAvg's weight)
    loss: float  # mean training loss over its steps
    steps: int
    trained: int  # query items its steps trained on (the samples-seen count of convergence speed)


def _train_steps(model: nn.Module, batches: Sequence[Batch], plan: StepPlan, device: torch.device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    model.train()
    total = 0.0
    for batch in batches:
        b = batch.to(device)
        loss = predictor_loss(model, b.context_x, b.context_y, b.context_mask, b.query_x, b.query_y, b.query_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / max(len(batches), 1)


def local_update(
    model: nn.Module, global_weights: Weights, group: GroupData, plan: StepPlan, rng: np.random.Generator, device: torch.device
) -> LocalResult:
    """One client's round: S steps of E episodes of its own group, from the global weights."""
    model.load_state_dict(global_weights)
    steps = plan.steps(len(group))
    batches = [
        stack([draw_episode(group, plan.context, plan.queries, rng) for _ in range(plan.episodes_per_step)]) for _ in range(steps)
    ]
    loss = _train_steps(model, batches, plan, device)
    return LocalResult(_cpu(model), len(group), loss, steps, sum(b.queries for b in batches))


def train_pooled(
    model: nn.Module,
    groups: Sequence[GroupData],
    plan: StepPlan,
    picks_rng: np.random.Generator,
    episodes_rng: np.random.Generator,
    device: torch.device,
) -> LocalResult:
    """The centralized reference's round: S steps over all groups' items pooled (S from the pooled N),
    each episode from one group chosen with probability n_g / N (`picks_rng`), drawn with `episodes_rng`.

    With one group this is exactly `local_update` on it given the same episodes stream (tested).
    """
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    total = int(sizes.sum())
    steps = plan.steps(total)
    picks = picks_rng.choice(len(groups), size=(steps, plan.episodes_per_step), p=sizes / sizes.sum())
    batches = [stack([draw_episode(groups[int(i)], plan.context, plan.queries, episodes_rng) for i in row]) for row in picks]
    loss = _train_steps(model, batches, plan, device)
    return LocalResult(_cpu(model), total, loss, steps, sum(b.queries for b in batches))


def _cpu(model: nn.Module) -> Weights:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, context: GroupData, queries: GroupData, device: torch.device, size: int = 64) -> np.ndarray:
    """Predicted rating distributions of every query item given the group's context.  -> [N, K] probabilities"""
    model.eval()
    rows = []
    for batch in query_batches(context, queries, size):
        b = batch.to(device)
        log_probs = model(b.context_x, b.context_y, b.context_mask, b.query_x)  # [1, Q, K]
        rows.append(log_probs[0][b.query_mask[0]].exp().double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def evaluate(
    model: nn.Module, contexts: Mapping[str, GroupData], queries: Mapping[str, GroupData], device: torch.device
) -> dict[str, dict[str, float]]:
    """Per group: `alignment` (PluralLLM's score, firm.rewards.metrics.group_alignment), `item_alignment`, `mae`."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted(queries):
        probs = predict(model, contexts[name], queries[name], device)
        levels = queries[name].y.tolist()
        out[name] = {
            "alignment": group_alignment(probs, levels, queries[name].questions),
            "item_alignment": item_alignment(probs, levels),
            "mae": mae(probs, levels),
        }
    return out
