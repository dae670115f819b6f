"""A group's rated items as tensors, and the episodes the predictor trains and is evaluated on.

An episode is one group's few-shot problem (GPO, Zhao et al. 2023): C context pairs (x_i, y_i)
drawn from the group's own training items and Q query items, disjoint from the context, whose
ratings the predictor must give. A batch stacks E episodes, padded to the largest C and Q with
masks. The regression predictor reads the same batches and ignores the context.

Evaluation uses a fixed context per group (`eval_context`, drawn once from the seed): for a seen
group from its training items, for an unseen group from its own items (the few examples it shows
the trained model), and the queries are every other item of the group, in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GroupData:
    """One group's items: embeddings, ratings and question ids, all on the CPU."""

    name: str
    x: torch.Tensor  # [N, D] float32
    y: torch.Tensor  # [N] int64, 1..K
    questions: tuple[str, ...]  # [N]

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.shape != (self.x.shape[0],) or len(self.questions) != self.x.shape[0]:
            raise ValueError(
                f"group {self.name!r}: x {tuple(self.x.shape)}, y {tuple(self.y.shape)} and {len(self.questions)} questions disagree"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: Sequence[int] | np.ndarray) -> GroupData:
        """The items at `index`, in that order."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return GroupData(self.name, self.x[idx], self.y[idx], tuple(self.questions[int(i)] for i in idx))


@dataclass(frozen=True)
class Batch:
    """E episodes padded to the same sizes; masks mark the real items."""

    context_x: torch.Tensor  # [E, C, D]
    context_y: torch.Tensor  # [E, C] int64 (1 where padded)
    context_mask: torch.Tensor  # [E, C] bool
    query_x: torch.Tensor  # [E, Q, D]
    query_y: torch.Tensor  # [E, Q] int64 (1 where padded)
    query_mask: torch.Tensor  # [E, Q] bool

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (self.context_x, self.context_y, self.context_mask, self.query_x, self.query_y, self.query_mask)
            )
        )

    @property
    def queries(self) -> int:
        """Real query items in the batch: the samples it trains on."""
        return int(self.query_mask.sum())


def stack(episodes: Sequence[tuple[GroupData, GroupData]]) -> Batch:
    """Pad (context, queries) pairs into one Batch."""
    dim = episodes[0][1].x.shape[1]
    c = max(len(ctx) for ctx, _ in episodes)
    q = max(len(qry) for _, qry in episodes)
    e = len(episodes)
    cx, qx = torch.zeros(e, c, dim), torch.zeros(e, q, dim)
    cy, qy = torch.ones(e, c, dtype=torch.int64), torch.ones(e, q, dtype=torch.int64)
    cm, qm = torch.zeros(e, c, dtype=torch.bool), torch.zeros(e, q, dtype=torch.bool)
    for i, (ctx, qry) in enumerate(episodes):
        cx[i, : len(ctx)], cy[i, : len(ctx)], cm[i, : len(ctx)] = ctx.x, ctx.y, True
        qx[i, : len(qry)], qy[i, : len(qry)], qm[i, : len(qry)] = qry.x, qry.y, True
    return Batch(cx, cy, cm, qx, qy, qm)


def draw_episode(group: GroupData, context: int, queries: int, rng: np.random.Generator) -> tuple[GroupData, GroupData]:
    """C context and Q query items of one group, disjoint, uniformly without replacement.

    A group with fewer than C + Q items keeps at least one query: C' = min(C, N - 1), Q' = min(Q, N - C').
    """
    n = len(group)
    if n < 2 and context > 0:
        raise ValueError(f"group {group.name!r} has {n} item(s); an episode needs a context item and a query")
    c = min(context, n - 1) if context > 0 else 0
    q = min(queries, n - c)
    order = rng.permutation(n)
    return group.take(order[:c]), group.take(order[c : c + q])


def eval_context(group: GroupData, context: int, rng: np.random.Generator) -> np.ndarray:
    """The indices of the fixed evaluation context of a group (C of its items, or all but one if fewer)."""
    n = len(group)
    c = min(context, max(n - 1, 0))
    return np.sort(rng.choice(n, size=c, replace=False)) if c else np.zeros(0, dtype=np.int64)


def query_batches(context: GroupData, queries: GroupData, size: int) -> list[Batch]:
    """Every query item once, `size` per episode, each episode with the same context."""
    return [stack([(context, queries.take(range(s, min(s + size, len(queries)))))]) for s in range(0, len(queries), size)]
