"""Checks on client updates before aggregation, and robust aggregation rules (README "Reliability").

Every engine passes each round's updates through `screen` before they reach the aggregator:
- `check_update`: the payload count, tensor names, shapes and dtypes must be those of the global
  adapter, and every value finite; otherwise the update is rejected with the reason;
- norm screening: an update whose L2 norm exceeds `max_norm_ratio` x the round's median norm
  (over the updates that passed the first check, when there are 3 or more) is rejected.
Rejected updates are recorded in the round's `dropped` and never averaged in.

`RobustMean` replaces the sample-weighted running mean of the one-adapter algorithms with a
coordinate-wise median or trimmed mean, optionally after clipping each delta to a maximum norm.
These rules keep the round's deltas in memory (O(clients_per_round x d), not O(d)), and they
change what FIRM's analysis assumes: the server step is no longer the weighted mean of the
client deltas, so the drift bound and the convergence rate of the paper do not apply as stated
(docs/reliability.md).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from firm.aggregation import RunningMean
from firm.codec import Adapter
from firm.config import AggregationConfig, Config


class RoundFailed(RuntimeError):
    """Fewer clients returned a usable update than `federation.min_clients` demands."""


def check_enough(config: Config, round_idx: int, stage: str, client_ids: Sequence[int], dropped: dict[int, str]) -> None:
    """Raise RoundFailed when fewer than `federation.min_clients` (0 = all sampled) clients are left."""
    need = config.federation.min_clients or len(client_ids)
    got = len(client_ids) - len(dropped)
    if got < need:
        reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(dropped.items()))
        raise RoundFailed(
            f"round {round_idx} ({stage}): {got} of {len(client_ids)} sampled clients returned an update, "
            f"federation.min_clients needs {need} ({reasons})"
        )


def check_update(uploads: Sequence[Adapter], reference: Adapter, expected: int) -> str | None:
    """Why this client's upload cannot be aggregated (None if it can): count, names, shapes, dtypes, finiteness."""
    if len(uploads) != expected:
        return f"rejected: {len(uploads)} payloads, expected {expected}"
    for i, upload in enumerate(uploads):
        where = f"payload {i}: " if expected > 1 else ""
        if upload.keys() != reference.keys():
            missing, extra = sorted(reference.keys() - upload.keys()), sorted(upload.keys() - reference.keys())
            return f"rejected: {where}tensor names differ (missing {missing[:2]}, unexpected {extra[:2]})"
        for name, ref in reference.items():
            t = upload[name]
            if tuple(t.shape) != tuple(ref.shape):
                return f"rejected: {where}{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            if t.dtype != ref.dtype:
                return f"rejected: {where}{name} has dtype {t.dtype}, expected {ref.dtype}"
            if not bool(torch.isfinite(t).all()):
                return f"rejected: {where}{name} has NaN or Inf values"
    return None


def update_norm(uploads: Sequence[Adapter]) -> float:
    """L2 norm over all payloads and tensors of one client's upload (float64)."""
    return math.sqrt(sum(float(t.to(torch.float64).pow(2).sum()) for upload in uploads for t in upload.values()))


@dataclass
class Candidate:
    """One client's upload waiting for the round's checks."""

    client_id: int
    uploads: list[Adapter]
    weight: float


def screen(
    candidates: Sequence[Candidate], reference: Adapter, expected: int, max_norm_ratio: float
) -> tuple[list[Candidate], dict[int, str]]:
    """The candidates that pass `check_update` and the norm screen, and the reasons for the others."""
    rejected: dict[int, str] = {}
    passed: list[Candidate] = []
    for c in candidates:
        reason = check_update(c.uploads, reference, expected)
        if reason is None and not (math.isfinite(c.weight) and c.weight > 0):
            reason = f"rejected: sample count {c.weight} is not positive"
        if reason is None:
            passed.append(c)
        else:
            rejected[c.client_id] = reason
    if max_norm_ratio > 0 and len(passed) >= 3:
        norms = {c.client_id: update_norm(c.uploads) for c in passed}
        median = statistics.median(norms.values())
        limit = max_norm_ratio * median
        for c in list(passed):
            if norms[c.client_id] > limit:
                rejected[c.client_id] = (
                    f"rejected: update norm {norms[c.client_id]:.4g} > {max_norm_ratio:g} x the round's median {median:.4g}"
                )
                passed.remove(c)
    return passed, rejected


class RobustMean(RunningMean):
    """A one-adapter aggregator with clipping and a coordinate-wise median or trimmed mean (see the module docstring).

    `add` keeps the (clipped) deltas; `mean` returns the rule's aggregate, which `apply_mean_delta`
    applies as theta + eta_g * aggregate. The running sums of the parent are kept too, so
    `update_drift` is still measured against the sample-weighted mean of the deltas received.
    """

    def __init__(self, rule: str, trim: float = 0.2, clip_norm: float = 0.0) -> None:
        super().__init__()
        self.rule, self.trim, self.clip_norm = rule, trim, clip_norm
        self.deltas: list[Adapter] = []
        self.clipped = 0

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        delta = uploads if isinstance(uploads, dict) else uploads[0] if len(uploads) == 1 else None
        if delta is None:
            raise ValueError("a one-adapter aggregator got several payloads")
        if self.clip_norm > 0:
            norm = update_norm([delta])
            if norm > self.clip_norm:
                delta = {n: t * (self.clip_norm / norm) for n, t in delta.items()}
                self.clipped += 1
        super().add(delta, weight)
        self.deltas.append({n: t.to(torch.float64) for n, t in delta.items()})

    def mean(self) -> Adapter:
        if self.rule == "mean":
            return super().mean()
        if not self.deltas:
            raise ValueError("no client delta was aggregated")
        result: Adapter = {}
        for name in self.deltas[0]:
            ordered = torch.stack([d[name] for d in self.deltas]).sort(dim=0).values  # [n, ...], per coordinate
            n = ordered.shape[0]
            if self.rule == "median":  # the mean of the two middle values for an even count
                result[name] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
            elif self.rule == "trimmed_mean":
                k = int(self.trim * n)
                result[name] = ordered[k : n - k].mean(dim=0)
            else:
                raise ValueError(f"unknown aggregation rule {self.rule!r}")
        return result

    @property
    def stats(self) -> dict[str, object]:
        return {"aggregation": self.rule, "clipped": self.clipped} if self.clip_norm > 0 or self.rule != "mean" else {}


def mean_aggregator(config: AggregationConfig) -> RunningMean:
    """The aggregator of the one-adapter algorithms: the running weighted mean, or `RobustMean` when configured."""
    if config.rule == "mean" and config.clip_norm <= 0:
        return RunningMean()
    return RobustMean(config.rule, config.trim, config.clip_norm)
