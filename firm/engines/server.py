"""Plumbing: the server's end of a round, shared by every engine: what a round produced, and how it closes.

An engine (firm.engines.inprocess, firm.engines.flower) moves the round's messages;
what the server does with the updates that arrive is the same for all of them and lives here:
the counts it expects of each client (`expected_uploads` from the algorithm's `RoundShape`,
`expected_samples`), and `close_round` (screen, aggregate, check there are enough, step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from firm.algorithms.protocol import Aggregator, Algorithm, ServerState
from firm.codec import Adapter
from firm.config import Config
from firm.local_step import Timer
from firm.robust import SpilledUpdates, check_enough


@dataclass
class RoundOutcome:
    """What one round produced, for the run loop to log."""

    global_adapter: Adapter
    client_ids: list[int]
    weights: dict[int, list[float]]  # client -> lambdabar_i [M]
    steps: dict[int, list[dict[str, Any]]]  # client -> per-local-step log
    drift_updates: float
    server: dict[str, Any]  # what the server computed this round (e.g. its objective weights, a plan)
    upload_bytes: int
    download_bytes: int
    times: dict[str, float] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)  # sampled client -> why it has no update this round
    server_state: ServerState = field(default_factory=dict)  # the server's state after this round (the loop keeps it)


def expected_uploads(algorithm: Algorithm) -> int:
    """Payloads per client update, as the algorithm's round shape declares them."""
    return algorithm.shape.uploads


def expected_samples(config: Config, stage: str) -> float:
    """The sample count the server asked a client for, which is its aggregation weight.

    `train`: K local steps x B prompts x G completions (an algorithm with M payloads reports the
    mean over its M runs, the same K x B x G); `probe` (a prober's first trip): one rollout batch, B x G. A client's own
    count is not trusted: one that disagrees is rejected (firm.robust.rejection).
    """
    ro = config.rollout
    batch = ro.prompts_per_step * ro.samples_per_prompt
    return float(batch if stage == "probe" else config.algorithm.local_steps * batch)


def close_round(
    config: Config,
    algorithm: Algorithm,
    global_adapter: Adapter,
    aggregator: Aggregator,
    candidates: SpilledUpdates,
    round_idx: int,
    client_ids: Sequence[int],
    dropped: dict[int, str],
    weights: dict[int, list[float]],
    steps: dict[int, list[dict[str, Any]]],
    timer: Timer,
) -> tuple[Adapter, float, dict[str, Any]]:
    """The server's end of a round, shared by the engines: screen the held updates and aggregate
    those that pass (read back from the spill one at a time), keep only aggregated clients in the
    logs, check there are enough (RoundFailed), then the algorithm's server step. Returns the new
    global adapter, the update drift and the aggregator's stats."""
    with timer.phase("aggregation"):
        dropped.update(candidates.screen())
        for c in candidates.passed():
            aggregator.add(c.uploads, c.weight)
    for client_id in dropped:  # the logs keep the clients whose update was aggregated
        weights.pop(client_id, None)
        steps.pop(client_id, None)
    check_enough(config, round_idx, "train", client_ids, dropped)
    with timer.phase("aggregation"):
        new_global = algorithm.server_update(global_adapter, aggregator)
        drift = aggregator.update_drift()
    return new_global, drift, dict(getattr(aggregator, "stats", {}))
