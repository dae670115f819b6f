"""Plumbing: FIRM's Flower ServerApp and ClientApp (Flower 1.41 Message API).

ServerApp (`server_app`, runs next to the SuperLink): reads the FIRM config from the run-config
and runs `firm.train.run` with the `FlowerEngine`, so the run directory, metrics, checkpoints
and report are the in-process engine's.

ClientApp (`client_app`, runs on each SuperNode):
- `query`: replies with the client id this SuperNode holds (node config `client-id`);
- `query.palette`: with `palette.targets`, draws this node's reference samples once and answers
  the palette's statistics questions from them (firm.engines.flower.palette);
- `train`: sets the received global adapter (or keeps it, for the second trip of a
  two-round-trip algorithm), runs the algorithm's local update on this node's prompts and
  replies with the upload payload(s), the sample count, the mean objective weights, the
  per-step log and the phase times. Per-client algorithm state (error-feedback residuals) lives
  on the node's disk, one version per round, and each message names the version to start from
  (firm.engines.flower.node_state), so a run survives SuperNode and SuperLink restarts.

A node's prompts are the built-in partition's shard `client-id` (computed from the run's data
config and seed, exactly as in process), or, with node config `prompt-file=/path.jsonl`, the
site's own file. Either way they never leave the node.

The model, scorers and prompts are built once per process and reused while what they are built
from is unchanged (model, LoRA and seed for the model; objectives and data for the rest); the
`firm flower worker` keeps one process alive for all of a node's rounds (Flower's own executor
starts a fresh process per message).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.utils import get_flwr_home

from firm.algorithms import Algorithm
from firm.algorithms.protocol import ROUND_IDX, as_prober
from firm.client import problem_sampler
from firm.compression import encode_uploads
from firm.config import Config
from firm.data import Prompt, load_jsonl, split_prompts
from firm.engines.flower.engine import FlowerEngine
from firm.engines.flower.node_state import ClientStateStore
from firm.engines.flower.palette import node_reply, solve_on_nodes, with_server_preference
from firm.engines.flower.records import (
    adapter_to_record,
    payload_to_record,
    put_json,
    record_to_adapter,
    resume_dir,
    run_config_to_config,
)
from firm.engines.flower.secagg import SecureFlowerEngine, fit_reply, in_protocol, secaggplus_when_asked
from firm.local_step import Timer
from firm.objectives import Objective, resolve_objective
from firm.policy import Policy, build_policy
from firm.privacy.wrap import build_algorithm

server_app = ServerApp()
client_app = ClientApp()

STATE_DIR = "firm-client-state"
"""Where a node keeps its clients' state without node config `state-dir`: this directory in `$FLWR_HOME`."""


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run the configured algorithm with the SuperNodes as clients (firm.train.run + FlowerEngine)."""
    from firm.palette import PaletteInfeasible
    from firm.train import run

    config = run_config_to_config(context.run_config)
    # A progress bar cannot redraw through Flower's log stream; the engine prints a line per round instead.
    config = dataclasses.replace(config, output=dataclasses.replace(config.output, progress=False))
    resume_from = resume_dir(context.run_config)  # `firm train --resume`: continue from its latest checkpoint
    engine = SecureFlowerEngine if config.engine.secure_aggregation else FlowerEngine  # secagg.py: SecAgg+ rounds
    try:
        result = run(config, engine=partial(engine, grid), palette_solve=partial(solve_on_nodes, grid), resume_from=resume_from)
    except PaletteInfeasible as err:  # the user reads this line in the streamed log; no run directory is written
        print(f"firm: error: {err}; nothing was trained", flush=True)
        raise
    final = result.summary.get("final_eval") or {}
    print("firm: done; final eval " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
    print(f"firm: run directory {result.run_dir}", flush=True)


# --------------------------------------------------------------------------- client side


@dataclasses.dataclass
class _Runtime:
    """What a node builds once per process for a run config: model, scorers, prompts, algorithm."""

    key: tuple[Any, ...]
    weights_key: tuple[Any, ...]  # (model, lora, seed): what the policy's weights were built from
    policy: Policy
    objectives: list[tuple[str, Objective]]
    shard: Sequence[Prompt]
    algorithm: Algorithm


_RUNTIME: _Runtime | None = None


def _state_dir(context: Context) -> Path:
    """The node's client-state directory: node config `state-dir`, else `$FLWR_HOME/firm-client-state`."""
    value = str(context.node_config.get("state-dir", ""))
    return Path(value) if value else get_flwr_home() / STATE_DIR


def _node_client_id(context: Context) -> int:
    value = context.node_config.get("client-id")
    if value is None:
        raise ValueError("this SuperNode has no node config `client-id`; start it with --node-config 'client-id=<0..N-1>'")
    return int(value)


def runtime(config: Config, context: Context) -> _Runtime:
    """This process's model, scorers, prompts and algorithm for `config`, built on first use."""
    global _RUNTIME
    client_id = _node_client_id(context)
    prompt_file = str(context.node_config.get("prompt-file", ""))
    key = (
        config.model,
        config.lora,
        config.objectives.names,
        config.data,
        config.federation,
        config.eval,
        client_id,
        prompt_file,
    )
    # What determines the policy's weights (build_policy): the model, the LoRA config and the seed
    # (the tiny model's base weights and every model's LoRA init are drawn from it).
    weights_key = (config.model, config.lora, config.federation.seed)
    if _RUNTIME is not None and _RUNTIME.weights_key == weights_key:
        policy = _RUNTIME.policy  # the same weights: keep it, the adapter is set per message
    else:
        print(f"firm: client {client_id}: loading model {config.model.name} (once per process)", file=sys.stderr, flush=True)
        policy = build_policy(config.model, config.lora, config.federation.seed)
        print(f"firm: client {client_id}: compute dtype {policy.precision.name} ({policy.precision.reason})", file=sys.stderr)
    if _RUNTIME is not None and _RUNTIME.key == key:
        shard = _RUNTIME.shard
        objectives = _RUNTIME.objectives
    else:
        objectives = [(name, resolve_objective(name)) for name in config.objectives.names]
        shard = load_jsonl(Path(prompt_file)) if prompt_file else split_prompts(config).clients[client_id]
        print(
            f"firm: client {client_id}: {len(shard)} prompts, objectives {', '.join(config.objectives.names)}",
            file=sys.stderr,
            flush=True,
        )
    _RUNTIME = _Runtime(key, weights_key, policy, objectives, shard, build_algorithm(config))
    return _RUNTIME


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Say which client id this SuperNode holds."""
    content = RecordDict()
    put_json(content, "firm.client", {"client_id": _node_client_id(context)})
    return Message(content, reply_to=msg)


@client_app.query("palette")
def client_palette(msg: Message, context: Context) -> Message:
    """A palette statistics question, answered from this node's reference samples (firm.engines.flower.palette)."""
    config = run_config_to_config(context.run_config)
    return node_reply(msg, context, _node_client_id(context), config, partial(runtime, config, context))


@client_app.train(mods=[secaggplus_when_asked])
def client_train(msg: Message, context: Context) -> Message:
    """One client's side of a round (or of its probe trip): local update on this node's prompts.

    In a SecAgg+ round (secagg.py) the reply is the uploads in the layout Flower's mod masks on the way out.
    """
    meta = msg.content.config_records["firm.round"]
    config = with_server_preference(run_config_to_config(context.run_config), meta)
    rt = runtime(config, context)
    round_idx, client_id, stage = int(str(meta["round"])), int(str(meta["client_id"])), str(meta["stage"])
    if client_id != _node_client_id(context):
        raise ValueError(f"message for client {client_id} reached the SuperNode holding client {_node_client_id(context)}")
    timer = Timer(rt.policy.device)
    # The client's state is on this node's disk, as of the round the server names (node_state.py).
    store = ClientStateStore(_state_dir(context), str(meta["run_key"]), client_id)
    state = {**store.load(int(str(meta["state_round"]))), ROUND_IDX: round_idx}  # the round is not saved
    store.prune(int(str(meta["keep_from"])))
    if "adapter" in msg.content:
        with timer.phase("communication"):
            adapter = record_to_adapter(msg.content.array_records["adapter"])
    else:  # second trip: the adapter came with the probe
        adapter = store.load_probe_adapter(round_idx)
    rt.policy.set_adapter(adapter)
    sampler = problem_sampler(rt.policy, rt.objectives, rt.shard, config, round_idx, client_id, timer)
    if stage == "probe":
        store.save_probe_adapter(round_idx, adapter)
        update = as_prober(rt.algorithm).client_probe(rt.policy.params, sampler, state)
    elif "plan" in msg.content:
        plan = record_to_adapter(msg.content.array_records["plan"])
        update = as_prober(rt.algorithm).client_update(rt.policy.params, sampler, state, timer, plan=plan)
    else:
        update = rt.algorithm.client_update(rt.policy.params, sampler, state, timer)
    content = RecordDict()
    if in_protocol(msg):  # SecAgg+: Flower's mod quantises and masks these before the reply leaves the node
        content = fit_reply(update.uploads, config.engine.secagg_clipping_range, client_id)
    elif stage == "probe" or config.compression.kind == "none":  # probes always travel uncompressed
        for i, upload in enumerate(update.uploads):
            content[f"upload.{i}"] = adapter_to_record(upload)
    else:  # the in-process engine's encoding, as opaque bytes; the residual joins this node's state
        with timer.phase("communication"):
            payloads, residuals = encode_uploads(update.uploads, config.compression, state)
        update.client_state.update(residuals)
        for i, payload in enumerate(payloads):
            content[f"upload.{i}"] = payload_to_record(payload)
    if stage != "probe":
        store.save(round_idx, update.client_state)  # before the reply: the server names this version next
    times = dict(timer.totals)
    put_json(
        content,
        "firm.update",
        {
            "uploads": len(update.uploads),
            "num_samples": update.num_samples,
            "mean_weights": list(update.mean_weights),
            "steps": update.steps,
            "times": times,
        },
    )
    return Message(content, reply_to=msg)
