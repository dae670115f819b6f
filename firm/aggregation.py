"""Server aggregation for one-adapter algorithms: a running weighted mean (docs/design.md section 4.2).

    Deltabar = sum_i w_i Delta_i,   w_i proportional to client i's number of samples
    theta^{t+1} = theta^t + eta_g Deltabar

The server keeps running sums, never the N client deltas: memory O(d), not O(N d). (While the
norm screen waits for a round's median, its updates wait on disk: `firm.robust.SpilledUpdates`.)
The same sums give the update drift of docs/design.md section 6 without a second pass:

    drift.updates = mean_i ||Delta_i - Deltabar||^2 / ||Deltabar||^2
                  = (mean_i ||Delta_i||^2 - 2 <mean_i Delta_i, Deltabar> + ||Deltabar||^2) / ||Deltabar||^2
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from firm.codec import Adapter


class RunningMean:
    """Weighted mean of adapter-shaped deltas, accumulated one client at a time."""

    def __init__(self) -> None:
        self.weighted_sum: Adapter = {}  # sum_i n_i Delta_i
        self.plain_sum: Adapter = {}  # sum_i Delta_i (for the unweighted mean in drift)
        self.total_weight = 0.0
        self.count = 0
        self.sq_norm_sum = 0.0  # sum_i ||Delta_i||^2, float64

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        """Add one client's delta (a one-adapter upload: the adapter itself or a list of one)."""
        if isinstance(uploads, dict):
            delta = uploads
        elif len(uploads) == 1:
            delta = uploads[0]
        else:
            raise ValueError(f"a one-adapter aggregator got {len(uploads)} payloads")
        if weight <= 0:
            raise ValueError(f"aggregation weight must be > 0, got {weight}")
        if self.count and delta.keys() != self.weighted_sum.keys():
            raise ValueError("client delta has different tensor names than the previous ones")
        for name, t in delta.items():
            t64 = t.to(torch.float64)
            if name in self.weighted_sum:
                self.weighted_sum[name] += weight * t64
                self.plain_sum[name] += t64
            else:
                self.weighted_sum[name] = weight * t64
                self.plain_sum[name] = t64.clone()
            self.sq_norm_sum += float(t64.pow(2).sum())
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Adapter:
        """Deltabar (float64)."""
        if not self.count:
            raise ValueError("no client delta was aggregated")
        return {n: s / self.total_weight for n, s in self.weighted_sum.items()}

    def update_drift(self) -> float:
        """mean_i ||Delta_i - Deltabar||^2 / ||Deltabar||^2 (0 when Deltabar = 0)."""
        mean = self.mean()
        mean_sq = sum(float(t.pow(2).sum()) for t in mean.values())
        if mean_sq == 0.0:
            return 0.0
        cross = sum(float((self.plain_sum[n] / self.count * t).sum()) for n, t in mean.items())
        spread = self.sq_norm_sum / self.count - 2.0 * cross + mean_sq
        return max(spread, 0.0) / mean_sq


def apply_mean_delta(global_adapter: Adapter, aggregate: RunningMean, server_lr: float) -> Adapter:
    """theta^{t+1} = theta^t + eta_g Deltabar, in the global adapter's dtype."""
    mean = aggregate.mean()
    return {n: (t.to(torch.float64) + server_lr * mean[n]).to(t.dtype) for n, t in global_adapter.items()}


def weights_drift(client_weights: list[list[float]]) -> float:
    """drift.weights = mean_i || lambdabar_i - mean_j lambdabar_j ||_1 (docs/design.md section 6)."""
    w = torch.tensor(client_weights, dtype=torch.float64)  # [clients, M]
    return float((w - w.mean(dim=0)).abs().sum(dim=1).mean())
