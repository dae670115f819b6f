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
from firm.algorithms.protocol import TwoRoundTrips
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
    dropped: dict[int, str] = field(default_factory=dict)  # sampled client -> why it has no update this round


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
        upload_bytes = download_bytes = 0
        plan_payload: bytes | None = None
        server_stats: dict[str, Any] = {}
        if isinstance(self.algorithm, TwoRoundTrips):
            # Two round trips (FedCMOO): every client probes at the global adapter, the server plans
            # (e.g. objective weights) and broadcasts the plan; the clients keep the adapter they got.
            probes = self.algorithm.new_probe_aggregator(sum(t.numel() for t in global_adapter.values()))
            for client_id in client_ids:
                with timer.phase("communication"):
                    self.policy.set_adapter(decode(broadcast))
                    download_bytes += len(broadcast)
                sampler = problem_sampler(
                    self.policy, self.objectives, self.shards[client_id], self.config, round_idx, client_id, timer
                )
                probe = self.algorithm.client_probe(self.policy.params, sampler, self.client_states.get(client_id, {}))
                with timer.phase("communication"):
                    payloads = [encode(upload) for upload in probe.uploads]
                    upload_bytes += sum(len(p) for p in payloads)
                probes.add([decode(p) for p in payloads], float(probe.num_samples))
            with timer.phase("solve"):
                plan = self.algorithm.server_plan(probes)
            server_stats["plan"] = {k: v.tolist() for k, v in plan.items()}
            with timer.phase("communication"):
                plan_payload = encode(plan)
        aggregator = self.algorithm.new_aggregator()
        weights: dict[int, list[float]] = {}
        steps: dict[int, list[dict[str, Any]]] = {}
        for client_id in client_ids:
            with timer.phase("communication"):
                received = decode(broadcast)
                if plan_payload is None:
                    download_bytes += len(broadcast)
                else:  # the adapter already came with the probe; now only the plan travels
                    plan_received = decode(plan_payload)
                    download_bytes += len(plan_payload)
            self.policy.set_adapter(received)
            sampler = problem_sampler(
                self.policy, self.objectives, self.shards[client_id], self.config, round_idx, client_id, timer
            )
            state = self.client_states.get(client_id, {})
            if plan_payload is None:
                update = self.algorithm.client_update(self.policy.params, sampler, state, timer)
            else:
                update = self.algorithm.client_update(self.policy.params, sampler, state, timer, plan=plan_received)  # type: ignore[call-arg]
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
            server_stats.update(getattr(aggregator, "stats", {}))
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
