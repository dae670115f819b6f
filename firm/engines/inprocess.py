"""The in-process engine: every client of a round runs in this process, one after another.

One base model lives in memory; before a client runs, the global adapter is decoded from the
broadcast payload and copied into the live LoRA parameters; the client's upload is encoded,
counted, decoded and fed to the server's running aggregate (memory O(d) whatever the number of
clients). Per-client algorithm state is kept here between rounds, not in the algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firm.algorithms import Algorithm
from firm.client import problem_sampler, sample_clients
from firm.codec import Adapter, decode, encode
from firm.config import Config
from firm.data import Prompt
from firm.local_step import Timer
from firm.objectives import Objective
from firm.policy import Policy


@dataclass
class RoundOutcome:
    """What one round produced, for the run loop to log."""

    global_adapter: Adapter
    client_ids: list[int]
    weights: dict[int, list[float]]  # client -> lambdabar_i [M]
    steps: dict[int, list[dict[str, Any]]]  # client -> per-local-step log
    drift_updates: float
    server: dict[str, Any]  # what the server computed this round (e.g. FMGDA's weights)
    upload_bytes: int
    download_bytes: int
    times: dict[str, float] = field(default_factory=dict)


class InProcessEngine:
    """Runs rounds of `algorithm` with all clients in this process."""

    def __init__(
        self,
        policy: Policy,
        algorithm: Algorithm,
        objectives: Sequence[tuple[str, Objective]],
        shards: Sequence[Sequence[Prompt]],
        config: Config,
        communicate: bool = True,
    ) -> None:
        self.policy = policy
        self.algorithm = algorithm
        self.objectives = objectives
        self.shards = shards
        self.config = config
        self.client_states: dict[int, dict[str, Any]] = {}
        # False for the non-federated references (centralized, local): the payloads still take the
        # same path through the codec, but nothing is sent, so nothing is counted.
        self.communicate = communicate

    def run_round(self, round_idx: int, global_adapter: Adapter, on_client_done: Any = None) -> RoundOutcome:
        fed = self.config.federation
        timer = Timer(self.policy.device)
        client_ids = sample_clients(fed.seed, round_idx, fed.num_clients, fed.clients_per_round)
        with timer.phase("communication"):
            broadcast = encode(global_adapter)
        aggregator = self.algorithm.new_aggregator()
        upload_bytes = download_bytes = 0
        weights: dict[int, list[float]] = {}
        steps: dict[int, list[dict[str, Any]]] = {}
        for client_id in client_ids:
            with timer.phase("communication"):
                received = decode(broadcast)
                download_bytes += len(broadcast)
            self.policy.set_adapter(received)
            sampler = problem_sampler(
                self.policy, self.objectives, self.shards[client_id], self.config, round_idx, client_id, timer
            )
            update = self.algorithm.client_update(self.policy.params, sampler, self.client_states.get(client_id, {}), timer)
            self.client_states[client_id] = update.client_state
            with timer.phase("communication"):
                payloads = [encode(upload) for upload in update.uploads]
                upload_bytes += sum(len(p) for p in payloads)
                uploads = [decode(p) for p in payloads]
            with timer.phase("aggregation"):
                aggregator.add(uploads, float(update.num_samples))
            weights[client_id] = update.mean_weights
            steps[client_id] = update.steps
            if on_client_done is not None:
                on_client_done(client_id)
        with timer.phase("aggregation"):
            new_global = self.algorithm.server_update(global_adapter, aggregator)
            drift_updates = aggregator.update_drift()
            server_stats = dict(getattr(aggregator, "stats", {}))
        self.policy.set_adapter(new_global)
        if not self.communicate:
            upload_bytes = download_bytes = 0
        return RoundOutcome(
            global_adapter=new_global,
            client_ids=client_ids,
            weights=weights,
            steps=steps,
            drift_updates=drift_updates,
            server=server_stats,
            upload_bytes=upload_bytes,
            download_bytes=download_bytes,
            times=dict(timer.totals),
        )
