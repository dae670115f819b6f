"""What an algorithm is: functions over explicit state that engines call (Flower-style configure -> fit -> aggregate).

Per round, an engine:
    1. sends the global adapter to each sampled client;
    2. on the client: `update = algorithm.client_update(params, sample_problem, client_state)`,
       with `params` the live adapter set to the global one, and encodes each of `update.uploads`
       (one adapter-shaped payload each: one for FIRM and FedAvg, M for FMGDA);
    3. on the server: `aggregator = algorithm.new_aggregator()`, `aggregator.add(decoded uploads,
       update.num_samples)` per client, then `algorithm.server_update(global, aggregator)`;
       `aggregator.stats` (if any) is logged as the round's `server` field.

Algorithms never do I/O, never print, never import an engine; the engine keeps per-client state
(`update.client_state`) across rounds and hands it back on the client's next round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from firm.codec import Adapter
from firm.config import Config
from firm.local_step import LocalProblem, Timer


@dataclass
class ClientUpdate:
    """What a client returns: the payload to upload and what to log."""

    uploads: list[Adapter]  # what goes over the wire, one encoded payload each (one-adapter algorithms: [delta])
    num_samples: int  # aggregation weight
    mean_weights: list[float]  # [M] lambdabar_i
    steps: list[dict[str, Any]] = field(default_factory=list)  # per-local-step log
    client_state: dict[str, Any] = field(default_factory=dict)  # kept by the engine for the next round

    @property
    def upload(self) -> Adapter:
        """The single payload of a one-adapter algorithm."""
        if len(self.uploads) != 1:
            raise ValueError(f"this update has {len(self.uploads)} payloads, not one")
        return self.uploads[0]


class Aggregator(Protocol):
    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None: ...

    def update_drift(self) -> float: ...


class Algorithm(Protocol):
    @property
    def name(self) -> str: ...

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate: ...

    def new_aggregator(self) -> Aggregator: ...

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter: ...


@runtime_checkable
class TwoRoundTrips(Protocol):
    """An algorithm whose clients first probe and whose server plans before the local steps (FedCMOO).

    The engine calls `client_probe` on every sampled client, screens each probe with
    `check_probe(uploads, d)` (firm.robust.screen_probes), adds the decoded payloads that pass to
    `new_probe_aggregator(d)`, broadcasts `server_plan(probes)` (named tensors), and passes the
    decoded plan to `client_update(..., plan=plan)`.
    """

    def client_probe(
        self, params: dict[str, torch.nn.Parameter], sample_problem: Callable[[int], LocalProblem], client_state: dict[str, Any]
    ) -> ClientUpdate: ...

    def check_probe(self, uploads: Sequence[Adapter], size: int) -> str | None: ...

    def new_probe_aggregator(self, size: int) -> Aggregator: ...

    def server_plan(self, probes: Any) -> Adapter: ...


AlgorithmFactory = Callable[[Config], Algorithm]
