"""Plumbing: the server's side of a round on Flower, the same algorithm objects with SuperNodes as clients.

Inside the ServerApp, `firm.train.run` drives the run exactly as in process (evaluation,
metrics, checkpoints, report); only `run_round` differs: the round's sampled clients are the
SuperNodes whose node config holds those client ids, the global adapter goes out in a `train`
Message, and each reply's update is validated, decoded and added to the algorithm's aggregator
in client-id order (the in-process order, so the same seed gives the same adapter).

A sampled client whose node is missing, errs, or does not reply within `engine.round_timeout`
is dropped from the round and recorded in the row's `dropped`; the round aggregates the rest
(weights re-normalised by the running mean) unless fewer than `federation.min_clients` replied.
Probes (the first trip of an algorithm whose `RoundShape` probes) are screened like updates (`firm.robust.screen_probes`).
With `engine.secure_aggregation` the round is `firm.engines.flower.secagg.SecureFlowerEngine`'s (Flower's SecAgg+);
this engine refuses to run it in the clear.

The clients' algorithm states stay on their nodes' disks (`firm.engines.flower.node_state`);
`client_states` holds, per client, only the round of its current version, so the run loop
checkpoints it and rolls it back on a retry as in process, and each message names the version
to start from. A SuperNode that restarts comes back under a new node id: every round first asks
the nodes that connected since the last one which client they hold.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from firm.algorithms import Algorithm
from firm.algorithms.protocol import ServerState, as_prober
from firm.checkpoint import ROUND_DIR
from firm.client import sample_clients
from firm.codec import Adapter
from firm.compression import decode_upload
from firm.config import Config
from firm.data import FederatedPrompts
from firm.engines.flower.node_state import STATE_ROUND, run_key
from firm.engines.flower.records import adapter_to_record, get_json, payload_bytes, record_to_adapter, record_to_payload
from firm.engines.server import RoundOutcome, close_round, expected_samples, expected_uploads
from firm.local_step import Timer
from firm.objectives import Objective
from firm.policy import Policy
from firm.robust import Candidate, RoundFailed, SpilledUpdates, check_enough, screen_probes


class FlowerEngine:
    """`run_round` over a Flower Grid; see the module docstring."""

    def __init__(
        self,
        grid: Grid,
        policy: Policy,
        algorithm: Algorithm,
        objectives: Sequence[tuple[str, Objective]],
        prompts: FederatedPrompts,
        config: Config,
        communicate: bool = True,
    ) -> None:
        del objectives, prompts, communicate  # the clients hold their own; bytes are always counted here
        self.grid = grid
        self.policy = policy
        self.algorithm = algorithm
        self.config = config
        if not config.output.name:
            raise ValueError("the Flower engine needs output.name: it names the clients' states on their nodes")
        # The clients' states stay on their nodes (firm.engines.flower.node_state); the server keeps, and
        # checkpoints, only which version is each client's current one: client -> {STATE_ROUND: round}.
        self.client_states: dict[int, dict[str, Any]] = {}
        self.run_key = run_key(config)
        self.state_rounds_after: dict[int, dict[int, int]] = {}  # completed round -> each client's state round then
        self.keep_from: dict[int, int] = {}  # client -> its oldest state version a resume can name (this round)
        self.nodes = self.discover_nodes(grid, config)
        self.asked = set(self.nodes.values())  # node ids asked for their client id

    # ----------------------------------------------------------------- node discovery

    @staticmethod
    def discover_nodes(grid: Grid, config: Config) -> dict[int, int]:
        """client id -> node id, asking every connected SuperNode; waits up to round_timeout for all N.

        Also the palette's discovery (firm.engines.flower.palette), before this engine exists.
        """
        n = config.federation.num_clients
        deadline = time.monotonic() + config.engine.round_timeout
        found: dict[int, int] = {}
        asked: set[int] = set()
        while True:
            new = [node for node in grid.get_node_ids() if node not in asked]
            if new:
                asked.update(new)
                queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
                for reply in send_and_receive(grid, queries, max(1.0, deadline - time.monotonic())):
                    if reply.has_error():
                        _say(f"node {reply.metadata.src_node_id} could not say its client id: {reply.error.reason}")
                        continue
                    client_id = int(get_json(reply.content, "firm.client")["client_id"])
                    if client_id in found and found[client_id] != reply.metadata.src_node_id:
                        raise RoundFailed(
                            f"two SuperNodes ({found[client_id]} and {reply.metadata.src_node_id}) both hold client id {client_id}"
                        )
                    if not 0 <= client_id < n:
                        _say(f"node {reply.metadata.src_node_id} holds client id {client_id}, outside 0..{n - 1}: ignored")
                        continue
                    found[client_id] = reply.metadata.src_node_id
            if len(found) == n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = sorted(set(range(n)) - set(found))
        _say(f"{len(found)} of {n} clients connected" + (f"; missing client ids {missing}" if missing else ""))
        return found

    def _refresh_nodes(self) -> None:
        """Ask the SuperNodes that connected since the last round which client they hold.

        A restarted SuperNode comes back with a new node id: its client moves to the new node and
        takes part again from this round on (its state is on the node's disk). The nodes of a
        SuperLink restarted with `--database` keep their ids.
        """
        new = [node for node in self.grid.get_node_ids() if node not in self.asked]
        if not new:
            return
        self.asked.update(new)
        n = self.config.federation.num_clients
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
        for reply in send_and_receive(self.grid, queries, self.config.engine.round_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                _say(f"node {node} could not say its client id: {reply.error.reason}")
                continue
            client_id = int(get_json(reply.content, "firm.client")["client_id"])
            if not 0 <= client_id < n:
                _say(f"node {node} holds client id {client_id}, outside 0..{n - 1}: ignored")
                continue
            if client_id in self.nodes and self.nodes[client_id] != node:
                _say(f"client {client_id} is now on node {node} (was {self.nodes[client_id]}): its SuperNode restarted")
            self.nodes[client_id] = node

    # ----------------------------------------------------------------- client state on the nodes

    def _state_round(self, client_id: int) -> int:
        """The round after which the client's current state was written on its node (0: no state yet)."""
        return int(self.client_states.get(client_id, {}).get(STATE_ROUND, 0))

    def _update_keep_from(self, round_idx: int) -> None:
        """Each client's state rounds as of the run directory's latest checkpoint: what a resume from it names.

        client_states is as of round_idx - 1 here (the run loop rolls a failed attempt back), so it
        is recorded under that round. A client missing from the result keeps all its versions
        (0): this server does not know its state round at that checkpoint (or it has none).
        """
        self.state_rounds_after[round_idx - 1] = {c: self._state_round(c) for c in self.client_states}
        root = Path(self.config.output.dir) / self.config.output.name / "checkpoints"
        saved = [int(m.group(1)) for p in root.glob("round_*") if (m := ROUND_DIR.match(p.name))] if root.is_dir() else []
        latest = max(saved, default=0)
        self.keep_from = self.state_rounds_after.get(latest, {})
        self.state_rounds_after = {r: s for r, s in self.state_rounds_after.items() if r >= latest}

    # ----------------------------------------------------------------- one round

    def run_round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, on_client_done: Any = None
    ) -> RoundOutcome:
        """One round from the last completed round's adapter and server state (the outcome carries the new
        ones); the updates it holds for the norm screen are removed when it ends, also on error."""
        if self.config.engine.secure_aggregation:  # never in the clear when asked not to be
            raise ValueError("engine.secure_aggregation: the round runs on firm.engines.flower.secagg.SecureFlowerEngine")
        self._refresh_nodes()
        self._update_keep_from(round_idx)
        expected = expected_uploads(self.algorithm)
        samples = expected_samples(self.config, "train")
        with SpilledUpdates(
            global_adapter, expected, self.config.aggregation.max_norm_ratio, expected_samples=samples
        ) as candidates:
            return self._round(round_idx, global_adapter, server_state, candidates, on_client_done)

    def _round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, candidates: SpilledUpdates, on_client_done: Any
    ) -> RoundOutcome:
        fed = self.config.federation
        start = time.perf_counter()
        timer = Timer(self.policy.device)
        client_ids = sample_clients(fed.seed, round_idx, fed.num_clients, fed.clients_per_round)
        dropped: dict[int, str] = {c: "no SuperNode holds this client id" for c in client_ids if c not in self.nodes}
        upload_bytes = download_bytes = 0
        server_stats: dict[str, Any] = {}
        with timer.phase("communication"):
            adapter_record = adapter_to_record(global_adapter)
        adapter_size = payload_bytes(adapter_record)
        plan_record = None
        if self.algorithm.shape.probes:
            prober = as_prober(self.algorithm)
            probes = prober.new_probe_aggregator(sum(t.numel() for t in global_adapter.values()))
            live = [c for c in client_ids if c not in dropped]
            replies = self._exchange(round_idx, "probe", live, {"adapter": adapter_record}, timer, dropped)
            download_bytes += adapter_size * len(live)
            probe_candidates: list[Candidate] = []
            for client_id, reply in replies:
                try:
                    uploads, up_bytes = _uploads(reply.content)
                    num_samples = float(get_json(reply.content, "firm.update")["num_samples"])
                except (KeyError, ValueError, TypeError) as err:  # a reply that is not a FIRM probe
                    dropped[client_id] = f"rejected: malformed reply ({type(err).__name__}: {err})"
                    continue
                upload_bytes += up_bytes
                probe_candidates.append(Candidate(client_id, uploads, num_samples))
            check = partial(prober.check_probe, size=sum(t.numel() for t in global_adapter.values()))
            max_ratio = self.config.aggregation.max_norm_ratio
            passed, rejected = screen_probes(probe_candidates, check, expected_samples(self.config, "probe"), max_ratio)
            dropped.update(rejected)
            for c in passed:
                probes.add(c.uploads, c.weight)
            check_enough(self.config, round_idx, "probe", client_ids, dropped)
            with timer.phase("solve"):
                plan, server_state = prober.server_plan(probes, server_state)
            server_stats["plan"] = {k: v.tolist() for k, v in plan.items()}
            plan_record = adapter_to_record(plan)
        live = [c for c in client_ids if c not in dropped]
        content = {"adapter": adapter_record} if plan_record is None else {"plan": plan_record}
        sent_size = adapter_size if plan_record is None else payload_bytes(plan_record)
        replies = self._exchange(round_idx, "train", live, content, timer, dropped)
        download_bytes += sent_size * len(live)
        aggregator = self.algorithm.new_aggregator()
        weights: dict[int, list[float]] = {}
        steps: dict[int, list[dict[str, Any]]] = {}
        for client_id, reply in replies:
            self.client_states[client_id] = {STATE_ROUND: round_idx}  # its node wrote its state of this round
            try:
                with timer.phase("communication"):
                    uploads, up_bytes = _uploads(reply.content, self.config.compression.kind != "none", global_adapter)
                update = get_json(reply.content, "firm.update")
                num_samples = float(update["num_samples"])
            except (KeyError, ValueError, TypeError) as err:  # a reply that is not a FIRM update
                dropped[client_id] = f"rejected: malformed reply ({type(err).__name__}: {err})"
                continue
            upload_bytes += up_bytes
            with timer.phase("aggregation"):
                candidates.add(Candidate(client_id, uploads, num_samples))
            weights[client_id] = update["mean_weights"]
            steps[client_id] = update["steps"]
            for phase, seconds in update["times"].items():
                timer.totals[phase] = timer.totals.get(phase, 0.0) + seconds
            if on_client_done is not None:
                on_client_done(client_id)
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
        for client_id, why in dropped.items():
            _say(f"round {round_idx}: client {client_id} dropped: {why}")
        _say(
            f"round {round_idx}/{fed.rounds}: {len(weights)} of {len(client_ids)} clients updated, "
            f"{upload_bytes:,} bytes up, {time.perf_counter() - start:.1f} s"
        )
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

    def round_record(self, round_idx: int, client_id: int, stage: str) -> ConfigRecord:
        """The `firm.round` record of a client's message: round, stage, preference, and its state's version."""
        # The preference the clients step with is the server's: a palette solve sets it after the run-config was sent.
        pref = self.config.objectives.preference
        preference = {"preference": [float(v) for v in pref]} if pref else {}
        return ConfigRecord(
            {
                "round": round_idx,
                "client_id": client_id,
                "stage": stage,
                **preference,
                # which version of its state the node starts from, and which it may delete (node_state.py)
                "run_key": self.run_key,
                "state_round": self._state_round(client_id),
                "keep_from": self.keep_from.get(client_id, 0),
            }
        )

    def _exchange(
        self,
        round_idx: int,
        stage: str,
        client_ids: list[int],
        content: dict[str, Any],
        timer: Timer,
        dropped: dict[int, str],
    ) -> list[tuple[int, Message]]:
        """Send one `train` message per client and collect the good replies in client-id order."""
        messages: list[Message] = []
        for client_id in client_ids:
            records = RecordDict(dict(content))
            records["firm.round"] = self.round_record(round_idx, client_id, stage)
            messages.append(
                Message(records, dst_node_id=self.nodes[client_id], message_type=MessageType.TRAIN, group_id=str(round_idx))
            )
        by_node = {self.nodes[c]: c for c in client_ids}
        start = time.perf_counter()
        replies = send_and_receive(self.grid, messages, self.config.engine.round_timeout)
        timer.totals["exchange"] = timer.totals.get("exchange", 0.0) + time.perf_counter() - start
        good: dict[int, Message] = {}
        for reply in replies:
            sender = by_node.get(reply.metadata.src_node_id)
            if sender is None:
                continue
            if reply.has_error():
                dropped[sender] = f"error from its SuperNode: {reply.error.reason}"
            else:
                good[sender] = reply
        for client_id in client_ids:
            if client_id not in good and client_id not in dropped:
                dropped[client_id] = f"no reply within engine.round_timeout = {self.config.engine.round_timeout:g} s"
        return sorted(good.items())


def send_and_receive(grid: Grid, messages: list[Message], timeout: float, poll_s: float = 0.1) -> list[Message]:
    """`Grid.send_and_receive`, polling for replies every `poll_s` seconds instead of Flower 1.41's fixed 3 s."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(poll_s)
    return replies


def _uploads(content: RecordDict, compressed: bool = False, reference: Adapter | None = None) -> tuple[list[Adapter], int]:
    """The decoded upload payloads of a reply, and their bytes on the wire.

    `compressed`: each record holds the bytes of a compressed upload (firm.compression), decoded
    here to adapter-shaped tensors in the dtypes of `reference` (the global adapter).
    """
    count = int(get_json(content, "firm.update")["uploads"])
    records = [content.array_records[f"upload.{i}"] for i in range(count)]
    if compressed:
        dtypes = {name: t.dtype for name, t in (reference or {}).items()}
        uploads = [decode_upload(record_to_payload(r), dtypes) for r in records]
    else:
        uploads = [record_to_adapter(r) for r in records]
    return uploads, sum(payload_bytes(r) for r in records)


def _say(text: str) -> None:
    print(f"firm: {text}", file=sys.stderr, flush=True)
