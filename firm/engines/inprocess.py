"""Plumbing: the in-process engine runs every client of a round in this process, one after another.

One base model lives in memory; before a client runs, the global adapter is decoded from the
broadcast payload and copied into the live LoRA parameters; the client's upload is encoded,
counted, decoded and fed to the server's running aggregate, or, while the norm screen waits for
the round's median, held in `firm.robust.SpilledUpdates`, which spills them to disk (memory O(d)
whatever the number of clients). Per-client algorithm state is kept here between rounds, not in
the algorithm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from firm.algorithms import Algorithm
from firm.algorithms.protocol import ROUND_IDX, ClientUpdate, ServerState, as_prober
from firm.client import problem_sampler, sample_clients
from firm.codec import Adapter, decode, encode
from firm.compression import decode_upload, encode_uploads
from firm.config import CompressionConfig, Config
from firm.data import Prompt, PromptFileError
from firm.engines.server import RoundOutcome, close_round, expected_samples, expected_uploads
from firm.local_step import LocalProblem, Timer
from firm.objectives import Objective, ObjectiveError
from firm.policy import Policy
from firm.robust import Candidate, SpilledUpdates, check_enough, screen, screen_probes

USER_ERRORS = (ObjectiveError, PromptFileError, KeyboardInterrupt)
"""Errors of the user's input or the user's wish: they stop the run instead of dropping a client."""


ClientCall = Callable[[], ClientUpdate]
ClientWrapper = Callable[[int, int, ClientCall], ClientUpdate | None]
"""(round, client id, call) -> the client's update: `call()` runs the client; a wrapper may raise,
stall or change the result (fault injection in tests, instrumentation)."""


class ClientTimeout(RuntimeError):
    """A client went over `federation.client_timeout` in its round."""


def _with_deadline(sampler: Callable[[int], LocalProblem], deadline: float, limit: float) -> Callable[[int], LocalProblem]:
    """The client's problem sampler, refusing to start another local step after the deadline."""

    def sample(step: int) -> LocalProblem:
        if time.monotonic() > deadline:
            raise ClientTimeout(f"over federation.client_timeout = {limit:g} s before local step {step + 1}")
        return sampler(step)

    return sample


class InProcessEngine:
    """Runs rounds of `algorithm` with all clients in this process.

    A client that raises (anything but a user-input error such as a broken objective, which
    stops the run), goes over `federation.client_timeout`, or returns nothing is dropped from the
    round; every update then passes `firm.robust.screen` (names, shapes, dtypes, finite values,
    norm vs the round's median). Dropped and rejected clients are recorded in the round's
    `dropped`; the rest are aggregated. Fewer than `federation.min_clients` good updates raise
    `RoundFailed` (the run loop retries the round or stops).
    """

    def __init__(
        self,
        policy: Policy,
        algorithm: Algorithm,
        objectives: Sequence[tuple[str, Objective]],
        shards: Sequence[Sequence[Prompt]],
        config: Config,
        communicate: bool = True,
        client_wrapper: ClientWrapper | None = None,
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
        # Compression is a property of the wire: the references, which send nothing, lose nothing either.
        self.compression = config.compression if communicate else CompressionConfig()
        self.client_wrapper = client_wrapper

    def _run_client(self, round_idx: int, client_id: int, call: ClientCall, dropped: dict[int, str]) -> ClientUpdate | None:
        """One client's call with the failure policy of the class docstring; None if it was dropped."""
        limit = self.config.federation.client_timeout
        start = time.monotonic()
        try:
            update = call() if self.client_wrapper is None else self.client_wrapper(round_idx, client_id, call)
        except USER_ERRORS:
            raise
        except Exception as err:  # a failing client is dropped, the round goes on
            dropped[client_id] = f"raised {type(err).__name__}: {err}"
            return None
        if update is None or not update.uploads:
            dropped[client_id] = "returned no update"
            return None
        if limit > 0 and time.monotonic() - start > limit:
            dropped[client_id] = f"over federation.client_timeout = {limit:g} s ({time.monotonic() - start:.1f} s)"
            return None
        return update

    def _sampler(self, round_idx: int, client_id: int, timer: Timer) -> Callable[[int], LocalProblem]:
        sampler = problem_sampler(self.policy, self.objectives, self.shards[client_id], self.config, round_idx, client_id, timer)
        limit = self.config.federation.client_timeout
        return _with_deadline(sampler, time.monotonic() + limit, limit) if limit > 0 else sampler

    def run_round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, on_client_done: Any = None
    ) -> RoundOutcome:
        """One round from the last completed round's adapter and server state (neither is changed; the
        outcome carries the new ones); the updates held for the norm screen are removed when it ends, also on error."""
        expected = expected_uploads(self.algorithm)
        samples = expected_samples(self.config, "train")
        with SpilledUpdates(global_adapter, expected, self.config.aggregation.max_norm_ratio, expected_samples=samples) as held:
            return self._round(round_idx, global_adapter, server_state, held, on_client_done)

    def _round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, candidates: SpilledUpdates, on_client_done: Any
    ) -> RoundOutcome:
        fed = self.config.federation
        timer = Timer(self.policy.device)
        client_ids = sample_clients(fed.seed, round_idx, fed.num_clients, fed.clients_per_round)
        dropped: dict[int, str] = {}
        with timer.phase("communication"):
            broadcast = encode(global_adapter)
        upload_bytes = download_bytes = 0
        plan_payload: bytes | None = None
        server_stats: dict[str, Any] = {}
        max_ratio = self.config.aggregation.max_norm_ratio
        if self.algorithm.shape.probes:
            # Two round trips: every client probes at the global adapter, the server plans (e.g.
            # objective weights) and broadcasts the plan; the clients keep the adapter they got.
            prober = as_prober(self.algorithm)
            probes = prober.new_probe_aggregator(sum(t.numel() for t in global_adapter.values()))
            probe_candidates: list[Candidate] = []
            for client_id in client_ids:
                with timer.phase("communication"):
                    self.policy.set_adapter(decode(broadcast))
                    download_bytes += len(broadcast)
                sampler = self._sampler(round_idx, client_id, timer)
                state = {**self.client_states.get(client_id, {}), ROUND_IDX: round_idx}
                probe = self._run_client(
                    round_idx, client_id, partial(prober.client_probe, self.policy.params, sampler, state), dropped
                )
                if probe is None:
                    continue
                with timer.phase("communication"):
                    payloads = [encode(upload) for upload in probe.uploads]
                    upload_bytes += sum(len(p) for p in payloads)
                probe_candidates.append(Candidate(client_id, [decode(p) for p in payloads], float(probe.num_samples)))
            check = partial(prober.check_probe, size=sum(t.numel() for t in global_adapter.values()))
            passed, rejected = screen_probes(probe_candidates, check, expected_samples(self.config, "probe"), max_ratio)
            dropped.update(rejected)
            for c in passed:
                probes.add(c.uploads, c.weight)
            check_enough(self.config, round_idx, "probe", client_ids, dropped)
            with timer.phase("solve"):
                plan, server_state = prober.server_plan(probes, server_state)
            server_stats["plan"] = {k: v.tolist() for k, v in plan.items()}
            with timer.phase("communication"):
                plan_payload = encode(plan)
        aggregator = self.algorithm.new_aggregator()
        weights: dict[int, list[float]] = {}
        steps: dict[int, list[dict[str, Any]]] = {}
        expected = expected_uploads(self.algorithm)
        for client_id in client_ids:
            if client_id in dropped:  # failed its probe
                continue
            with timer.phase("communication"):
                received = decode(broadcast)
                if plan_payload is None:
                    download_bytes += len(broadcast)
                else:  # the adapter already came with the probe; now only the plan travels
                    plan_received = decode(plan_payload)
                    download_bytes += len(plan_payload)
            self.policy.set_adapter(received)
            sampler = self._sampler(round_idx, client_id, timer)
            state = {**self.client_states.get(client_id, {}), ROUND_IDX: round_idx}  # a copy: the round is not kept
            if plan_payload is None:
                call = partial(self.algorithm.client_update, self.policy.params, sampler, state, timer)
            else:
                call = partial(
                    as_prober(self.algorithm).client_update, self.policy.params, sampler, state, timer, plan=plan_received
                )
            update = self._run_client(round_idx, client_id, call, dropped)
            if on_client_done is not None:
                on_client_done(client_id)
            if update is None:
                continue
            with timer.phase("communication"):  # the client encodes (compresses), the server decodes
                payloads, residuals = encode_uploads(update.uploads, self.compression, state)
                upload_bytes += sum(len(p) for p in payloads)
                dtypes = {name: t.dtype for name, t in global_adapter.items()}
                uploads = [decode_upload(p, dtypes) for p in payloads]
            candidate = Candidate(client_id, uploads, float(update.num_samples))
            if max_ratio > 0:  # the norm screen needs the whole round: hold the updates (spilled) until it ends
                with timer.phase("aggregation"):
                    candidates.add(candidate)
            else:  # stream: memory O(d) whatever the number of clients
                passed, rejected = screen([candidate], global_adapter, expected, 0.0, candidates.expected_samples)
                dropped.update(rejected)
                for c in passed:
                    with timer.phase("aggregation"):
                        aggregator.add(c.uploads, c.weight)
            weights[client_id] = update.mean_weights
            steps[client_id] = update.steps
            self.client_states[client_id] = {**update.client_state, **residuals}  # error feedback stays on the client
        new_global, drift_updates, stats = close_round(
            self.config,
            self.algorithm,
            global_adapter,
            aggregator,
            candidates,
            round_idx,
            client_ids,
            dropped,
            weights,
            steps,
            timer,
        )
        server_stats.update(stats)
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
            dropped=dropped,
            server_state=server_state,
        )
