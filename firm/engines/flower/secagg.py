"""Plumbing: the training round through Flower's SecAgg+ (flwr 1.41), so the server learns only the mean of the updates.

`SecureFlowerEngine` is the `FlowerEngine` with `run_round` replaced (`engine.secure_aggregation`).
The round's train messages travel inside the four stages of Flower's own `SecAggPlusWorkflow`
(SecAgg+: Bell et al., CCS 2020, after Bonawitz et al., CCS 2017), run in order as its
`__call__` runs them; no cryptography is written here:

    setup              the server sends the protocol's parameters; each client replies with two public keys
    share keys         each client Shamir-shares its mask seed and its masking key among its neighbours
    collect masked     FIRM's train message (global adapter, `firm.round`) with the shares for that client; the
                       ClientApp runs the local update, and Flower's `secaggplus_mod` uploads it quantised and
                       masked: pairwise masks with each neighbour plus a mask of its own seed
    unmask             the survivors send the shares that remove the masks (live clients' seeds, dropped ones' keys)

The server gets the dequantised mean of the masked uploads and nothing else of them. A client
that drops out after sharing its keys leaves the round as long as every client keeps
`threshold` neighbours (`engine.secagg_reconstruction_threshold`); fewer, and the round fails
(RoundFailed, retried as any round). The mean is added to the algorithm's own aggregator as one
update of weight 1, which a running mean returns bit for bit: `server_update` (and
`algorithm.server_lr`) then steps exactly as after the plain round's adds.

Client side: `secaggplus_when_asked` is Flower's mod on the ClientApp's train handler, for the
messages of a SecAgg+ round only; `fit_reply` puts the uploads in the legacy FitRes layout the
mod reads (`to_arrays`: payload by payload, tensors in sorted name order, float64, shapes kept).
The server maps the mean back onto the global adapter's names and shapes (`from_arrays`).

Still in the clear, beside the masked vector: each client's `firm.update` record (sample count,
mean weights, step log, times), as without secure aggregation. `drift.updates` needs the
individual updates: it is NaN. Quantisation (`engine.secagg_clipping_range` c,
`engine.secagg_quantization_range` Q): each value is clipped to [-c, c] and rounded
stochastically to one of Q levels, an error below 2c/Q per value and so per value of the mean;
the rounding uses numpy's unseeded global generator, so runs repeat only to within that error.

Deliberate departures from Flower's workflow, none in its cryptography:
- weights: every update weighs 1 (`num_examples` 1, `max_weight` 1), the sample-weighted mean
  when every client does the K x B x G samples the server asks for (firm.robust checks that in
  the clear; here a count cannot buy weight, so it is not checked);
- Flower 1.41's unmask stage treats a node that dropped before the masks (at setup or share
  keys) as one that dropped after: it asks for shares no one holds and would cancel masks that
  were never added, so such a round fails. Once the keys are shared, the round here narrows the
  sampled set and every neighbourhood to the nodes that shared them: exactly those the masks involve;
- a masked upload whose layout is not the round's (count, shapes, integers), or whose
  `firm.update` is malformed, is dropped before the sum and its masks removed as a dropout's;
  its values stay hidden behind its own seed, whose shares are never asked for;
- the stages talk to the grid through FIRM's polling `send_and_receive`, each waiting up to
  `engine.round_timeout`, and count their bytes (`server.secure_aggregation` in the round's row).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from firm.algorithms import Algorithm
from firm.algorithms.protocol import ServerState
from firm.client import sample_clients
from firm.codec import Adapter
from firm.config import Config, EngineConfig
from firm.data import FederatedPrompts
from firm.engines.flower.engine import FlowerEngine, send_and_receive
from firm.engines.flower.node_state import STATE_ROUND
from firm.engines.flower.records import adapter_to_record, get_json, payload_bytes
from firm.engines.server import RoundOutcome, expected_uploads
from firm.local_step import Timer
from firm.objectives import Objective
from firm.policy import Policy
from firm.robust import RoundFailed, check_enough
from firm.transport import validate_secure_aggregation

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
"""The protocol's stages in order, by Flower's names."""

# --------------------------------------------------------------------------- the client's side


def in_protocol(msg: Message) -> bool:
    """Whether a message is one of a SecAgg+ round's: it carries the protocol's record."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for the messages of a SecAgg+ round; every other message goes straight through.

    Flower's mod takes every train message for one of the protocol's, and a plain round's or a
    probe's has no protocol record; the one ClientApp serves both kinds of run.
    """
    if in_protocol(msg):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def to_arrays(uploads: Sequence[Adapter]) -> NDArrays:
    """A client's uploads as the list the mod quantises: payload by payload, tensors in sorted name order, float64."""
    return [upload[name].detach().to("cpu", torch.float64).numpy() for upload in uploads for name in sorted(upload)]


def from_arrays(arrays: Sequence[np.ndarray], reference: Adapter, count: int) -> list[Adapter]:
    """Inverse of `to_arrays`: `count` payloads with the reference's names (in its order) and shapes, float64."""
    names = sorted(reference)
    if len(arrays) != count * len(names):
        raise ValueError(f"{len(arrays)} arrays for {count} payloads of {len(names)} tensors")
    payloads: list[Adapter] = []
    for i in range(count):
        by_name = dict(zip(names, arrays[i * len(names) : (i + 1) * len(names)], strict=True))
        payloads.append(
            {n: torch.from_numpy(np.array(by_name[n], dtype=np.float64)).reshape(reference[n].shape) for n in reference}
        )
    return payloads


def fit_reply(uploads: Sequence[Adapter], clipping_range: float, client_id: int) -> RecordDict:
    """The reply `secaggplus_mod` reads from the train handler: the uploads (`to_arrays`) in Flower's legacy FitRes
    layout with weight 1. The mod replaces the arrays by their masked quantisation before the reply leaves.

    A non-finite update is refused (the quantiser would sum garbage that no one could see); values
    the quantiser will clip to +-`clipping_range` are counted in a warning on this node only.
    """
    arrays = to_arrays(uploads)
    if not all(bool(np.isfinite(a).all()) for a in arrays):
        raise ValueError("the update has NaN or Inf values; secure aggregation would sum them unseen, so it is not sent")
    clipped = sum(int((np.abs(a) > clipping_range).sum()) for a in arrays)
    if clipped:
        print(
            f"firm: client {client_id}: secure aggregation clips {clipped} of {sum(a.size for a in arrays)} uploaded values "
            f"to +-{clipping_range:g} (engine.secagg_clipping_range)",
            file=sys.stderr,
            flush=True,
        )
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples=1, metrics={})
    return compat.fitres_to_recorddict(fitres, keep_input=False)


# --------------------------------------------------------------------------- the server's side


class _Round(Strategy):
    """The strategy the workflow consults: the round's nodes (`configure_fit`) and the mean it unmasked (`aggregate_fit`).

    The FitIns are empty: the round's messages are FIRM's (`run_secaggplus` swaps them in). The
    workflow calls nothing else; the evaluation half of Flower's Strategy is a no-op.
    """

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)
        self.mean: NDArrays | None = None
        self.aggregated: list[int] = []  # the nodes whose masked upload is in the sum

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        # The workflow reads only each proxy's node_id; no message goes through the proxy's grid.
        return [(GridClientProxy(node, cast(Grid, None), 0), FitIns(Parameters([], ""), {})) for node in self.nodes]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:  # every result carries the same unmasked mean (the workflow's legacy layout)
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        self.aggregated = sorted(cast(GridClientProxy, proxy).node_id for proxy, _ in results)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class StageGrid:
    """The grid the workflow's stages call: FIRM's polling exchange, each stage's bytes and seconds, and the screen
    of the masked uploads before the workflow sums them (`masked_rejection`)."""

    def __init__(self, grid: Grid, timeout: float, shapes: Sequence[tuple[int, ...]]) -> None:
        self.grid, self.timeout, self.shapes = grid, timeout, list(shapes)
        self.upload_bytes: dict[str, int] = {}  # stage -> bytes of the protocol records the clients sent
        self.download_bytes: dict[str, int] = {}  # stage -> bytes of the protocol records the server sent
        self.sent: dict[str, int] = {}  # stage -> messages sent
        self.lost: dict[int, str] = {}  # node -> why it left the protocol, at the first stage it did
        self.replied: set[int] = set()  # nodes that replied to the collect stage (and so saved their state)
        self.updates: dict[int, dict[str, Any]] = {}  # node -> its `firm.update` record, if its upload joins the sum

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """`Grid.send_and_receive` for the workflow: the replies it may use; the others are recorded in `lost`."""
        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        self.sent[stage] = len(messages)
        self.download_bytes[stage] = sum(payload_bytes(m.content.config_records[RECORD_KEY_CONFIGS]) for m in messages)
        good: list[Message] = []
        for reply in send_and_receive(self.grid, messages, self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.lost.setdefault(node, f"error from its SuperNode at the SecAgg+ {stage} stage: {reply.error.reason}")
                continue
            if stage == Stage.COLLECT_MASKED_VECTORS:
                self.replied.add(node)
                reason = masked_rejection(reply, self.shapes)
                if reason is not None:
                    self.lost.setdefault(node, reason)
                    continue
                self.updates[node] = get_json(reply.content, "firm.update")
            good.append(reply)
        answered = {r.metadata.src_node_id for r in good} | set(self.lost)
        for msg in messages:
            if msg.metadata.dst_node_id not in answered:
                self.lost[msg.metadata.dst_node_id] = (
                    f"no reply within engine.round_timeout = {self.timeout:g} s at the SecAgg+ {stage} stage"
                )
        self.upload_bytes[stage] = sum(payload_bytes(r.content.config_records[RECORD_KEY_CONFIGS]) for r in good)
        return good


def masked_rejection(reply: Message, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """Why a collect-stage reply cannot join the sum (None if it can): its masked arrays must be the round's layout,
    the weight's entry then one array per uploaded tensor, in integers; its `firm.update` must be readable."""
    try:
        update = get_json(reply.content, "firm.update")
        if not (
            isinstance(update["mean_weights"], list) and isinstance(update["steps"], list) and isinstance(update["times"], dict)
        ):
            raise TypeError("firm.update's mean_weights, steps and times must be a list, a list and a dict")
        blobs = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        masked = [bytes_to_ndarray(b) for b in cast(list[bytes], blobs)]
    except (KeyError, ValueError, TypeError) as err:
        return f"rejected: malformed reply ({type(err).__name__}: {err})"
    expected = [(1,), *shapes]
    got = [tuple(a.shape) for a in masked]
    if got != expected:
        return f"rejected: masked upload of {len(got)} arrays {got[:3]}..., expected {len(expected)} {expected[:3]}..."
    if not all(a.dtype.kind in "iu" for a in masked):
        return "rejected: masked upload is not integers"
    return None


def run_secaggplus(
    grid: StageGrid, contents: dict[int, RecordDict], round_idx: int, num_shares: int, threshold: int, engine: EngineConfig
) -> tuple[_Round, WorkflowState, dict[str, float], str | None]:
    """Flower's SecAgg+ workflow over the nodes of `contents` (node -> its train message's content), stage by stage as
    its `__call__` runs them: (strategy with the mean, state, seconds per stage, the stage it halted at or None)."""
    workflow = SecAggPlusWorkflow(
        num_shares,
        threshold,
        max_weight=1.0,
        clipping_range=engine.secagg_clipping_range,
        quantization_range=engine.secagg_quantization_range,
        timeout=engine.round_timeout,
    )
    strategy = _Round(list(contents))
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_idx})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    state = WorkflowState()
    steps = (workflow.setup_stage, workflow.share_keys_stage, workflow.collect_masked_vectors_stage, workflow.unmask_stage)
    seconds: dict[str, float] = {}
    for stage, step in zip(STAGES, steps, strict=True):
        start = time.perf_counter()
        ok = step(cast(Grid, grid), context, state)
        seconds[stage] = time.perf_counter() - start
        if stage == Stage.SETUP:  # each node's fit instruction is FIRM's train message (Flower's would be empty)
            state.nid_to_fitins = {node: contents[node] for node in state.nid_to_fitins}
        if stage == Stage.SHARE_KEYS:  # the masks involve only the nodes that shared keys (module docstring)
            shared = set(state.active_node_ids)
            state.sampled_node_ids = shared
            state.nid_to_neighbours = {n: ns & shared for n, ns in state.nid_to_neighbours.items() if n in shared}
        if not ok:
            return strategy, state, seconds, stage
    return strategy, state, seconds, None


class SecureFlowerEngine(FlowerEngine):
    """The Flower engine whose training round runs through SecAgg+ (the module docstring); the rest is FlowerEngine's."""

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
        validate_secure_aggregation(config)  # also for a Config built in code, before node discovery waits
        super().__init__(grid, policy, algorithm, objectives, prompts, config, communicate)

    def run_round(
        self, round_idx: int, global_adapter: Adapter, server_state: ServerState, on_client_done: Any = None
    ) -> RoundOutcome:
        """One round: sample, run SecAgg+ over the sampled clients' nodes, step with the mean; the server state passes
        through (an algorithm that plans between trips is refused)."""
        self._refresh_nodes()
        self._update_keep_from(round_idx)
        config, fed, eng = self.config, self.config.federation, self.config.engine
        start = time.perf_counter()
        timer = Timer(self.policy.device)
        client_ids = sample_clients(fed.seed, round_idx, fed.num_clients, fed.clients_per_round)
        dropped: dict[int, str] = {c: "no SuperNode holds this client id" for c in client_ids if c not in self.nodes}
        node_of = {c: self.nodes[c] for c in client_ids if c not in dropped}
        client_of = {node: c for c, node in node_of.items()}
        num_shares = min(eng.secagg_num_shares or len(node_of), len(node_of))
        threshold = eng.secagg_reconstruction_threshold or num_shares // 2 + 1
        if len(node_of) < 3 or threshold >= num_shares:
            reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(dropped.items()))
            raise RoundFailed(
                f"round {round_idx} (train): secure aggregation needs 3 or more clients and a reconstruction threshold "
                f"below the shares; {len(node_of)} of {len(client_ids)} sampled clients have a SuperNode, threshold "
                f"{threshold} of {num_shares} shares ({reasons})"
            )
        with timer.phase("communication"):
            adapter_record = adapter_to_record(global_adapter)
        contents = {
            node: RecordDict({"adapter": adapter_record, "firm.round": self.round_record(round_idx, c, "train")})
            for c, node in node_of.items()
        }
        uploads = expected_uploads(self.algorithm)
        shapes = [tuple(global_adapter[n].shape) for _ in range(uploads) for n in sorted(global_adapter)]
        grid = StageGrid(self.grid, eng.round_timeout, shapes)
        strategy, state, seconds, halted = run_secaggplus(grid, contents, round_idx, num_shares, threshold, eng)
        timer.totals["exchange"] = sum(seconds.values())
        for node in grid.replied:  # its node wrote its state of this round
            self.client_states[client_of[node]] = {STATE_ROUND: round_idx}
        aggregated = sorted(client_of[node] for node in strategy.aggregated) if halted is None else []
        for c, node in node_of.items():
            if c not in aggregated:
                dropped[c] = grid.lost.get(node, f"not in the sum: the SecAgg+ round stopped at its {halted} stage")
        if halted is not None or strategy.mean is None:
            reasons = "; ".join(f"client {c}: {why}" for c, why in sorted(dropped.items()))
            raise RoundFailed(
                f"round {round_idx} (train): secure aggregation stopped at its {halted or Stage.UNMASK} stage: fewer clients than the "
                f"reconstruction threshold of {state.threshold} were left to remove the masks ({reasons})"
            )
        weights: dict[int, list[float]] = {}
        steps: dict[int, list[dict[str, Any]]] = {}
        for c in aggregated:
            update = grid.updates[node_of[c]]
            weights[c], steps[c] = update["mean_weights"], update["steps"]
            for phase, secs in update["times"].items():
                timer.totals[phase] = timer.totals.get(phase, 0.0) + secs
        check_enough(config, round_idx, "train", client_ids, dropped)
        means = from_arrays(strategy.mean, global_adapter, uploads)  # uploads x adapter, float64
        aggregator = self.algorithm.new_aggregator()
        with timer.phase("aggregation"):
            aggregator.add(means, 1.0)  # the mean as one update of weight 1: a running mean gives it back exactly
            new_global = self.algorithm.server_update(global_adapter, aggregator)
        self.policy.set_adapter(new_global)
        for c in aggregated:
            if on_client_done is not None:
                on_client_done(c)
        server: dict[str, Any] = dict(getattr(aggregator, "stats", {}))
        server["secure_aggregation"] = {
            "aggregated": len(aggregated),
            "num_shares": state.num_shares,
            "threshold": state.threshold,
            "seconds": seconds,
            "upload_bytes": grid.upload_bytes,
            "download_bytes": grid.download_bytes,
        }
        upload_bytes = sum(grid.upload_bytes.values())
        download_bytes = (
            sum(grid.download_bytes.values()) + payload_bytes(adapter_record) * grid.sent[Stage.COLLECT_MASKED_VECTORS]
        )
        for client_id, why in dropped.items():
            _say(f"round {round_idx}: client {client_id} dropped: {why}")
        _say(
            f"round {round_idx}/{fed.rounds}: {len(aggregated)} of {len(client_ids)} clients updated through SecAgg+, "
            f"{upload_bytes:,} bytes up, {time.perf_counter() - start:.1f} s"
        )
        return RoundOutcome(
            global_adapter=new_global,
            client_ids=client_ids,
            weights=weights,
            steps=steps,
            drift_updates=math.nan,  # needs the individual updates, which the server never sees
            server=server,
            upload_bytes=upload_bytes,
            download_bytes=download_bytes,
            times=dict(timer.totals),
            dropped=dropped,
            server_state=server_state,
        )


def _say(text: str) -> None:
    print(f"firm: {text}", file=sys.stderr, flush=True)
