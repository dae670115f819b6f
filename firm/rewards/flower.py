"""The reward predictor's federated rounds on Flower (flwr 1.41, Message API): `train.engine=flower`.

The ServerApp runs `firm.rewards.train.run` (sampling, server optimiser, evaluation, checkpoints,
report) with `FlowerRunner` as its ClientRunner; only the clients' local updates move to SuperNodes:

    ServerApp: load_data (every group)  -- train: global weights, round, group -->  ClientApp (one per group)
    run(config, runner=FlowerRunner)    <-- weights, samples, loss, steps, trained   local_update

A node holds one seen group: node config `group=<name>`, or `client-id=i`, the i-th seen group in
name order (what `firm flower up` gives its nodes). It loads the data with `load_data` once per
process and data config (embeddings are cached on disk) and runs `local_update` on the in-process
stream (seed, EPISODES, round, index of its group), so a run gives the in-process weights bit for
bit. Weights travel as one ArrayRecord, one Array per tensor, names and dtypes kept
(firm.engines.flower.records; bfloat16, which has no numpy type, would be refused).

Departures from the policy's Flower engine: nobody is dropped. A sampled group with no SuperNode
(after up to `train.round_timeout` for one to connect), an error reply or no reply fails the round
(`RewardRoundFailed`, naming the groups); completed rounds are checkpointed for `--resume`. With
`model.dropout > 0` the engines differ: dropout masks come from each process's own torch generator.
`submit` (`firm reward train train.engine=flower`) is `flwr run` of an App built on the fly
(firm.engines.flower.submit's `app_project` and `flwr_run`). docs/rewards/flower.md.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import nn

from firm.config import ConfigError
from firm.engines.flower.engine import send_and_receive
from firm.engines.flower.records import RESUME_FROM, RunConfig, adapter_to_record, record_to_adapter, resume_dir
from firm.engines.flower.submit import FlowerRunError, app_project, flwr_run
from firm.policy import resolve_device
from firm.rewards.config import RewardConfig, reward_config_from_dict, reward_config_to_dict, validate
from firm.rewards.local import LocalResult, Weights, local_update
from firm.rewards.predictor import build_predictor
from firm.rewards.train import EPISODES, RewardData, load_data, plan_of, run, spec_of
from firm.seeding import Stream, numpy_rng
from firm.transport import is_loopback_address

server_app = ServerApp()
client_app = ClientApp()

ROUND, RESULT, NODE = "firm.reward.round", "firm.reward.result", "firm.reward.node"
"""ConfigRecord names: the round a train message asks for, a reply's counts, a node's answer to `query`."""


class RewardRoundFailed(RuntimeError):
    """A sampled group had no SuperNode, or its node erred or did not reply within train.round_timeout."""


# --------------------------------------------------------------------------- config <-> run-config


def reward_config_to_run_config(config: RewardConfig) -> RunConfig:
    """The config as Flower run-config entries, `section.key -> scalar` (every RewardConfig field is a scalar)."""
    return {
        f"{section}.{key}": value for section, fields in reward_config_to_dict(config).items() for key, value in fields.items()
    }


def run_config_to_reward_config(run_config: Mapping[str, Any]) -> RewardConfig:
    """Inverse of `reward_config_to_run_config`, validated; `RESUME_FROM` is skipped; ConfigError names a bad key."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in run_config.items():
        if dotted != RESUME_FROM:
            section, _, key = dotted.partition(".")
            nested.setdefault(section, {})[key] = value
    config = reward_config_from_dict(nested)
    validate(config)
    return config


def node_group(node_config: Mapping[str, Any], groups: Sequence[str]) -> str:
    """The seen group a node holds: node config `group=<name>`, or `client-id=i` (the i-th of `groups` sorted)."""
    ordered = sorted(groups)
    if "group" in node_config:
        name = str(node_config["group"])
        if name not in ordered:
            raise ValueError(f"node config group={name!r} is not one of the run's {len(ordered)} seen groups")
        return name
    if "client-id" in node_config:
        i = int(str(node_config["client-id"]))
        if not 0 <= i < len(ordered):
            raise ValueError(f"node config client-id={i} is outside 0..{len(ordered) - 1} (the run's seen groups)")
        return ordered[i]
    raise ValueError("this SuperNode has no node config `group=<name>` or `client-id=<i>`")


# --------------------------------------------------------------------------- server side


class FlowerRunner:
    """`firm.rewards.train.ClientRunner` over a Flower Grid: each sampled group's SuperNode runs its local update."""

    def __init__(self, grid: Grid, config: RewardConfig, groups: Sequence[str]) -> None:
        self.grid, self.groups, self.timeout = grid, sorted(groups), config.train.round_timeout
        self.nodes: dict[str, int] = {}  # group -> node id
        self.answered: set[int] = set()  # node ids that said which group they hold (or failed to)

    def __call__(self, weights: Weights, names: Sequence[str], round_idx: int) -> list[LocalResult]:
        """Send the round's groups the global weights; their results in the order of `names`."""
        missing = self._connect(names, time.monotonic() + self.timeout)
        if missing:
            raise RewardRoundFailed(
                f"round {round_idx}: no SuperNode holds group(s) {', '.join(missing)} after {self.timeout:g} s "
                "(train.round_timeout); start one per group with --node-config 'group=<name>' or 'client-id=<i>'"
            )
        record = adapter_to_record(weights)
        messages = [
            Message(
                RecordDict({"weights": record, ROUND: ConfigRecord({"round": round_idx, "group": name})}),
                dst_node_id=self.nodes[name],
                message_type=MessageType.TRAIN,
                group_id=str(round_idx),
            )
            for name in names
        ]
        by_node = {self.nodes[name]: name for name in names}
        results: dict[str, LocalResult] = {}
        failed: dict[str, str] = {}
        for reply in send_and_receive(self.grid, messages, self.timeout):
            name = by_node.get(reply.metadata.src_node_id)
            if name is None:
                continue
            if reply.has_error():
                failed[name] = f"error from its SuperNode: {reply.error.reason}"
                continue
            try:
                results[name] = _result(reply.content, name)
            except (KeyError, ValueError, TypeError) as err:
                failed[name] = f"malformed reply ({type(err).__name__}: {err})"
        late = [n for n in names if n not in results and n not in failed]
        failed.update({n: f"no reply within train.round_timeout = {self.timeout:g} s" for n in late})
        if failed:
            raise RewardRoundFailed(f"round {round_idx}: " + "; ".join(f"group {n}: {why}" for n, why in sorted(failed.items())))
        _say(f"round {round_idx}: {len(names)} groups trained on their SuperNodes")
        return [results[name] for name in names]

    def _connect(self, names: Sequence[str], deadline: float) -> list[str]:
        """Until each of `names` has a connected SuperNode (or the deadline), ask the new ones which group they hold.

        Nodes are asked only while a group is missing, so a node that never answers costs no time once
        the groups it could hold are found. Returns the groups still missing.
        """
        while True:
            live = set(self.grid.get_node_ids())
            missing = [n for n in names if self.nodes.get(n) not in live]
            if not missing or time.monotonic() > deadline:
                return missing
            new = [node for node in live if node not in self.answered]
            if not new:
                time.sleep(0.2)
                continue
            queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
            for reply in send_and_receive(self.grid, queries, max(1.0, deadline - time.monotonic())):
                self._learn(reply)

    def _learn(self, reply: Message) -> None:
        """Record the group a node's `query` reply names; a restarted SuperNode replaces its old node id."""
        node = reply.metadata.src_node_id
        self.answered.add(node)
        try:
            if reply.has_error():
                raise ValueError(reply.error.reason)
            held = reply.content.config_records[NODE]
            name = node_group({k: v for k, v in held.items() if v != ""}, self.groups)
        except (KeyError, ValueError) as err:
            _say(f"node {node} holds no group of this run: {err}")
            return
        old = self.nodes.get(name)
        if old is not None and old != node and old in self.grid.get_node_ids():
            raise RewardRoundFailed(f"two SuperNodes ({old} and {node}) both hold group {name}")
        self.nodes[name] = node


def _result(content: RecordDict, name: str) -> LocalResult:
    meta = content.config_records[RESULT]
    if str(meta["group"]) != name:
        raise ValueError(f"a reply for group {meta['group']!r}")
    weights = record_to_adapter(content.array_records["weights"])
    return LocalResult(
        weights, int(str(meta["samples"])), float(str(meta["loss"])), int(str(meta["steps"])), int(str(meta["trained"]))
    )


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the data (for sampling and evaluation), then `firm.rewards.train.run` with the SuperNodes as clients."""
    config = run_config_to_reward_config(context.run_config)
    try:
        data = load_data(config, resolve_device(config.train.device))
        path = run(config, data=data, resume=resume_dir(context.run_config), runner=FlowerRunner(grid, config, list(data.train)))
    except (ConfigError, RewardRoundFailed) as err:  # the user reads this line in the streamed log
        print(f"firm: error: {err}", flush=True)
        raise
    print(f"firm: run directory {path}", flush=True)


# --------------------------------------------------------------------------- client side


@dataclass
class _Runtime:
    """What a node builds once per process: the data (while `config.data` is unchanged) and a predictor to train."""

    data_key: Any
    data: RewardData
    model_key: Any
    model: nn.Module
    device: torch.device


_RUNTIME: _Runtime | None = None


def runtime(config: RewardConfig) -> _Runtime:
    """This process's data and predictor for `config`, built on first use and kept while what they come from is unchanged."""
    global _RUNTIME
    old, device = _RUNTIME, resolve_device(config.train.device)
    if old is not None and old.data_key == config.data:
        data = old.data
    else:
        _say("reward node: loading the ratings and their embeddings (once per process and data config)")
        data = load_data(config, device)
    spec = spec_of(config, data.dim)
    if old is not None and old.model_key == (spec, device):
        model = old.model  # its weights are set from every message
    else:
        with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the process's generator as it was
            model = build_predictor(spec).to(device)
    _RUNTIME = _Runtime(config.data, data, (spec, device), model, device)
    return _RUNTIME


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Say which group this node holds, as its node config gives it (the server resolves `client-id`)."""
    held = {k: context.node_config.get(k, "") for k in ("group", "client-id")}
    return Message(RecordDict({NODE: ConfigRecord(held)}), reply_to=msg)  # type: ignore[arg-type]


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """One group's round: `local_update` from the received weights, on the stream the in-process engine uses."""
    config = run_config_to_reward_config(context.run_config)
    meta = msg.content.config_records[ROUND]
    round_idx, name = int(str(meta["round"])), str(meta["group"])
    rt = runtime(config)
    mine = node_group(context.node_config, list(rt.data.train))
    if name != mine:
        raise ValueError(f"a message for group {name!r} reached the SuperNode holding group {mine!r}")
    index = sorted(rt.data.train).index(name)
    rng = numpy_rng(Stream.REWARD, config.train.seed, EPISODES, round_idx, index)
    weights = record_to_adapter(msg.content.array_records["weights"])
    result = local_update(rt.model, weights, rt.data.train[name], plan_of(config), rng, rt.device)
    counts = {"group": name, "samples": result.samples, "loss": result.loss, "steps": result.steps, "trained": result.trained}
    content = RecordDict({"weights": adapter_to_record(result.weights), RESULT: ConfigRecord(counts)})  # type: ignore[arg-type]
    return Message(content, reply_to=msg)


# --------------------------------------------------------------------------- firm reward train train.engine=flower


def prepare(config: RewardConfig) -> RewardConfig:
    """The config as the ServerApp runs it: absolute output directory, a fixed run name (so it can be read back here)."""
    out = config.output
    name = out.name or f"reward-{config.train.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(config, output=dataclasses.replace(out, dir=str(Path(out.dir).absolute()), name=name))


def submit(config: RewardConfig, *, quiet: bool = False, resume_from: Path | None = None) -> Path:
    """Run `config` on the SuperLink at `train.superlink` (or continue `resume_from`); the run directory once done.

    The directory is on the SuperLink's host; when that is another machine it does not exist here.
    """
    validate(config)  # the TLS rule, also for a config built in code
    config = prepare(config)
    run_dir = resume_from if resume_from is not None else Path(config.output.dir) / config.output.name
    if resume_from is None and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} already exists and is not empty; choose another output.name")
    run_config = reward_config_to_run_config(config)
    if resume_from is not None:
        run_config[RESUME_FROM] = str(resume_from.absolute())
    summary = run_dir / "summary.json"
    before = summary.stat().st_mtime_ns if summary.exists() else None
    project = app_project(
        run_config,
        "firm.rewards.flower:server_app",
        "firm.rewards.flower:client_app",
        "A FIRM reward-predictor run (PluralLLM's GPO)",
    )
    t = config.train
    code = flwr_run(project, t.superlink, t.root_certificates, "", quiet=quiet)
    if (summary.stat().st_mtime_ns if summary.exists() else None) == before:
        if code == 0 and not is_loopback_address(t.superlink):  # written on the SuperLink's host
            return run_dir
        raise FlowerRunError(
            f"the Flower run wrote no {summary} (flwr run exited with {code}); is a SuperLink listening on "
            f"{t.superlink}, with a SuperNode per group? See the streamed log (firm flower up: .firm-flower/*.log)"
        )
    return run_dir


def _say(text: str) -> None:
    print(f"firm: {text}", file=sys.stderr, flush=True)
