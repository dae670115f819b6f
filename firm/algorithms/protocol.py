"""What an algorithm is: functions over explicit state that engines call (Flower-style configure -> fit -> aggregate).

Per round, an engine:
    1. reads `algorithm.shape` (a `RoundShape`): how many payloads each client uploads, and
       whether the clients probe first (`Prober`); every engine reads it the same way, and none
       asks which algorithm it runs;
    2. if it probes: sends the global adapter, collects `algorithm.client_probe(...)` from each
       sampled client, screens them, and broadcasts `plan, server_state = algorithm.server_plan(
       probes, server_state)`;
    3. on the client: `update = algorithm.client_update(params, sample_problem, client_state)`
       (`plan=plan` for a prober), with `params` the live adapter set to the global one and
       `client_state[ROUND_IDX]` the round, and encodes each of `update.uploads` (`shape.uploads`
       adapter-shaped payloads);
    4. on the server: `aggregator = algorithm.new_aggregator()`, `aggregator.add(decoded uploads,
       update.num_samples)` per client, then `algorithm.server_update(global, aggregator)`;
       `aggregator.stats` (if any) is logged as the round's `server` field.

Algorithms never do I/O, never print, never import an engine, and keep no state between calls:
the engine keeps per-client state (`update.client_state`) and hands it back on the client's next
round; the run loop keeps the server's state (`ServerState`) beside it, passes it into each round
and checkpoints it (like fedjax's `ServerState`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

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


ROUND_IDX = "round_idx"
"""The key under which the engine puts the current round (from 1) into the client state it hands to
`client_update` / `client_probe` (FIRM's reg schedule reads it). It is not kept: what persists is the
`client_state` the update returns."""


ServerState = dict[str, Any]
"""What a server carries from one round to the next (FedCMOO: the previous plan's weights, its warm
start); {} for algorithms whose server forgets. Checkpointed with the run (tensors and JSON values)."""


@dataclass(frozen=True)
class RoundShape:
    """The shape of one round on the wire, declared by the algorithm and read by every engine.

    `uploads`: adapter-shaped payloads in each client's update (one delta; FMGDA: one per objective).
    `probes`: the clients first probe at the global adapter and the server plans before the local
    steps (the algorithm is a `Prober`); the plan travels to the clients in place of a second adapter.
    """

    uploads: int = 1
    probes: bool = False


ONE_ADAPTER = RoundShape()
"""One trip, one delta per client: FedAvg, MGDA, FIRM."""


class Aggregator(Protocol):
    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None: ...

    def update_drift(self) -> float: ...


class Algorithm(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> RoundShape: ...

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate: ...

    def new_aggregator(self) -> Aggregator: ...

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter: ...


class Prober(Algorithm, Protocol):
    """An algorithm whose round probes first (`shape.probes`): FedCMOO.

    The engine calls `client_probe` on every sampled client, screens each probe with
    `check_probe(uploads, d)` (firm.robust.screen_probes), adds the decoded payloads that pass to
    `new_probe_aggregator(d)`, broadcasts the plan of `server_plan(probes, server_state)` (named
    tensors; the new server state goes back to the run loop), and passes the decoded plan to
    `client_update(..., plan=plan)`.
    """

    def client_probe(
        self, params: dict[str, torch.nn.Parameter], sample_problem: Callable[[int], LocalProblem], client_state: dict[str, Any]
    ) -> ClientUpdate: ...

    def check_probe(self, uploads: Sequence[Adapter], size: int) -> str | None: ...

    def new_probe_aggregator(self, size: int) -> Aggregator: ...

    def server_plan(self, probes: Any, state: ServerState) -> tuple[Adapter, ServerState]: ...

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
        plan: Adapter | None = None,
    ) -> ClientUpdate: ...


def as_prober(algorithm: Algorithm) -> Prober:
    """The algorithm as a `Prober`, for an engine that read `shape.probes`; a clear error if it is not one."""
    missing = [m for m in ("client_probe", "check_probe", "new_probe_aggregator", "server_plan") if not hasattr(algorithm, m)]
    if missing:
        raise TypeError(f"algorithm {algorithm.name!r} declares shape.probes but has no {', '.join(missing)}")
    return cast(Prober, algorithm)


AlgorithmFactory = Callable[[Config], Algorithm]
