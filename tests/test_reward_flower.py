"""The reward predictor on Flower (firm.rewards.flower): messages, an in-memory federation, a loopback cluster.

The ClientApp's handlers are called with crafted Messages and the server's `FlowerRunner` talks
to them through `WireGrid`, a Grid in this process whose messages travel as Flower serialises them
(content-addressed objects, deflated and inflated again). The synthetic groups of
tests/test_reward_training.py reach the nodes through `load_data`, patched in
`firm.rewards.flower` (the one test-only hook); the loopback run uses the real chitchat data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.error import Error
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from firm.config import ConfigError
from firm.engines.flower import local
from firm.engines.flower.records import RESUME_FROM, adapter_to_record, record_to_adapter
from firm.rewards import flower
from firm.rewards.config import RewardConfig, load_reward_config
from firm.rewards.local import local_update
from firm.rewards.predictor import build_predictor
from firm.rewards.train import EPISODES, RewardData, in_process_runner, plan_of, run, spec_of
from firm.seeding import Stream, numpy_rng
from tests.conftest import as_flower_task, firm_cli
from tests.memory_grid import MemoryGrid
from tests.test_reward_training import _config, _data, _final


@pytest.fixture(autouse=True)
def _in_a_flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's messages take their run id from the process's task identity, set by Flower in a real app process."""
    as_flower_task(monkeypatch)
    monkeypatch.setattr(flower, "_RUNTIME", None)


def _serve(monkeypatch: pytest.MonkeyPatch, data: RewardData) -> list[RewardConfig]:
    """The nodes' `load_data` returns `data`; returns the list of configs it was called with."""
    calls: list[RewardConfig] = []

    def load(config: RewardConfig, device: torch.device) -> RewardData:
        calls.append(config)
        return data

    monkeypatch.setattr(flower, "load_data", load)
    return calls


def _context(config: RewardConfig, **node_config: Any) -> Context:
    run_config = flower.reward_config_to_run_config(config)
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)


def _wire(content: RecordDict) -> RecordDict:
    """`content` after the trip Flower gives it: deflated to its objects, inflated from their bytes."""
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    back = inflate_object_from_contents(content.object_id, objects)
    assert isinstance(back, RecordDict)
    return back


def _train_message(weights: dict[str, torch.Tensor], round_idx: int, group: str) -> Message:
    content = RecordDict(
        {"weights": adapter_to_record(weights), flower.ROUND: ConfigRecord({"round": round_idx, "group": group})}
    )
    return Message(_wire(content), dst_node_id=1, message_type=MessageType.TRAIN)


def _init(config: RewardConfig, dim: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return {k: v.clone() for k, v in build_predictor(spec_of(config, dim)).state_dict().items()}


def _rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock field."""
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# --------------------------------------------------------------------------- converters and records


def test_run_config_round_trip_keeps_every_field(tmp_path: Path) -> None:
    config = _config(tmp_path, "train.engine=flower", "train.server=fedadam", "data.attribute=mean", "train.round_timeout=7.5")
    flat = flower.reward_config_to_run_config(config)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())  # Flower's UserConfigValue
    assert flat["train.engine"] == "flower" and flat["model.d_model"] == 32
    assert flower.run_config_to_reward_config(flat) == config
    assert flower.run_config_to_reward_config({**flat, RESUME_FROM: "/somewhere"}) == config  # an instruction, not a field
    with pytest.raises(ConfigError, match=r"unknown key 'train\.nope'"):
        flower.run_config_to_reward_config({**flat, "train.nope": 1})
    with pytest.raises(ConfigError, match=r"train\.rounds must be >= 1"):
        flower.run_config_to_reward_config({**flat, "train.rounds": 0})


def test_flower_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"train\.mode=centralized runs in process only"):
        load_reward_config(None, ["train.engine=flower", "train.mode=centralized"])
    with pytest.raises(ConfigError, match=r"train\.superlink: 10\.0\.0\.5:8000 is not a loopback address"):
        load_reward_config(None, ["train.engine=flower", 'train.superlink="10.0.0.5:8000"'])
    with pytest.raises(ConfigError, match=r"train\.superlink: expected host:port"):
        load_reward_config(None, ["train.engine=flower", 'train.superlink="localhost"'])
    with pytest.raises(ConfigError, match=r"train\.round_timeout: must be > 0"):
        load_reward_config(None, ["train.round_timeout=0"])


def test_weights_cross_the_wire_with_their_names_dtypes_and_values(tmp_path: Path) -> None:
    weights = _init(_config(tmp_path), 8)
    weights = {
        "z.last": torch.arange(3),
        **weights,
        "half": torch.randn(4).half(),
        "scalar": torch.tensor(0.1, dtype=torch.float64),
    }
    back = record_to_adapter(_wire(RecordDict({"w": adapter_to_record(weights)})).array_records["w"])
    assert list(back) == list(weights)  # names, in order
    for name, tensor in weights.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape and torch.equal(back[name], tensor), name


def test_node_group_reads_group_or_client_id() -> None:
    groups = ["c", "a", "b"]
    assert flower.node_group({"group": "b"}, groups) == "b"
    assert [flower.node_group({"client-id": i}, groups) for i in range(3)] == ["a", "b", "c"]  # sorted names
    with pytest.raises(ValueError, match="group='z' is not one of the run's 3 seen groups"):
        flower.node_group({"group": "z"}, groups)
    with pytest.raises(ValueError, match=r"client-id=3 is outside 0\.\.2"):
        flower.node_group({"client-id": 3}, groups)
    with pytest.raises(ValueError, match="no node config"):
        flower.node_group({}, groups)


# --------------------------------------------------------------------------- the ClientApp's handlers


@pytest.mark.parametrize("node_config", [{"client-id": 1}, {"group": "b"}])
def test_train_handler_gives_the_in_process_update_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_config: dict[str, Any]
) -> None:
    data = _data({"a": 1, "b": -1, "c": 1}, {"u": 1})
    _serve(monkeypatch, data)
    config = _config(tmp_path, "train.seed=5")
    weights = _init(config, data.dim)
    reply = flower.client_train(_train_message(weights, 2, "b"), _context(config, **node_config))
    assert not reply.has_error()
    content = _wire(reply.content)
    got = record_to_adapter(content.array_records["weights"])
    model = build_predictor(spec_of(config, data.dim))
    rng = numpy_rng(Stream.REWARD, 5, EPISODES, 2, 1)  # "b" is the second seen group in name order
    expected = local_update(model, weights, data.train["b"], plan_of(config), rng, torch.device("cpu"))
    assert list(got) == list(expected.weights)
    assert all(got[k].dtype == expected.weights[k].dtype and torch.equal(got[k], expected.weights[k]) for k in got)
    assert not all(torch.equal(got[k], weights[k]) for k in got)  # it trained: the comparison means something
    counts = content.config_records[flower.RESULT]
    assert (counts["group"], counts["samples"], counts["steps"], counts["trained"]) == (
        "b",
        expected.samples,
        expected.steps,
        expected.trained,
    )
    assert counts["loss"] == expected.loss


def test_the_node_keeps_its_data_while_the_data_section_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data({"a": 1, "b": -1}, {})
    calls = _serve(monkeypatch, data)
    weights = _init(_config(tmp_path), data.dim)
    for overrides in [(), ("train.lr=1e-2",), ("train.seed=3", "model.queries=4")]:  # the same data section
        flower.client_train(_train_message(weights, 1, "a"), _context(_config(tmp_path, *overrides), **{"client-id": 0}))
    assert len(calls) == 1
    flower.client_train(_train_message(weights, 1, "a"), _context(_config(tmp_path, "data.seed=1"), **{"client-id": 0}))
    assert len(calls) == 2 and calls[1].data.seed == 1


def test_a_message_for_another_group_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data({"a": 1, "b": -1}, {})
    _serve(monkeypatch, data)
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="a message for group 'b' reached the SuperNode holding group 'a'"):
        flower.client_train(_train_message(_init(config, data.dim), 1, "b"), _context(config, group="a"))


# --------------------------------------------------------------------------- an in-memory federation

Tamper = Callable[[str, int, Message], Message | None]
"""(the node's group, round, reply) -> the reply the server receives, or None for none."""


class WireGrid(MemoryGrid):
    """A `MemoryGrid` whose SuperNodes are this process's reward ClientApp handlers. Every message and reply
    crosses `_wire` (Flower's serialisation), so what the server and the nodes read is what a SuperLink would
    deliver; `tamper` changes replies on the way back.
    """

    def __init__(self, config: RewardConfig, node_configs: list[dict[str, Any]], tamper: Tamper | None = None) -> None:
        super().__init__({100 + i: _context(config, **nc) for i, nc in enumerate(node_configs)})
        self.tamper = tamper

    def restart(self, node_id: int) -> None:
        """The node's SuperNode comes back under a new node id, with the same node config."""
        self.contexts[max(self.contexts) + 1] = self.contexts.pop(node_id)

    def answer(self, message: Message, context: Context) -> Message | None:
        meta = message.metadata
        delivered = Message(_wire(message.content), dst_node_id=meta.dst_node_id, message_type=meta.message_type)
        if meta.message_type == MessageType.QUERY:
            reply: Message | None = flower.client_query(delivered, context)
        else:
            reply = flower.client_train(delivered, context)
            if self.tamper is not None:
                record = delivered.content.config_records[flower.ROUND]
                reply = self.tamper(str(record["group"]), int(str(record["round"])), reply)
        if reply is None:
            return None
        # back to the server as a reply to what it sent
        return Message(reply.error, reply_to=message) if reply.has_error() else Message(_wire(reply.content), reply_to=message)


THREE = {"a": 1, "b": -1, "c": 1}
NODES: list[dict[str, Any]] = [{"client-id": 0}, {"group": "b"}, {"client-id": 2}]
"""One node per seen group of THREE, named both ways."""
FOUR, FOUR_NODES = {**THREE, "d": -1}, [*NODES, {"group": "d"}]


def _flower_run(config: RewardConfig, data: RewardData, grid: WireGrid, resume: Path | None = None) -> Path:
    runner = flower.FlowerRunner(grid, config, list(data.train))  # type: ignore[arg-type]
    return run(config, data=data, resume=resume, progress=False, runner=runner)


@pytest.mark.parametrize("server", ["fedavg", "fedadam"])
def test_a_run_over_flower_messages_is_the_in_process_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    """4 groups, 3 sampled per round, 3 rounds: the same metrics.jsonl (but wall-clock seconds), checkpoints and model."""
    data = _data(FOUR, {"u": -1})
    _serve(monkeypatch, data)
    common = [
        "train.clients_per_round=3",
        f"train.server={server}",
        "train.server_lr=0.05" if server == "fedadam" else "train.server_lr=1.0",
    ]
    flower_config = _config(tmp_path, "output.name=flower", "train.engine=flower", "train.round_timeout=5", *common)
    grid = WireGrid(flower_config, FOUR_NODES)
    ours = _flower_run(flower_config, data, grid)
    theirs = run(_config(tmp_path, "output.name=inprocess", *common), data=data, progress=False)
    a, b = _final(ours), _final(theirs)
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert _rows(ours) == _rows(theirs)
    assert [r["round"] for r in _rows(ours)] == [0, 1, 2, 3]
    assert {len(r["clients"]) for r in _rows(ours)[1:]} == {3}
    assert len({tuple(r["clients"]) for r in _rows(ours)[1:]}) > 1  # the sampling varies: different nodes are asked
    assert sorted(p.name for p in (ours / "checkpoints").iterdir()) == ["round_0001", "round_0002", "round_0003"]
    assert grid.sent == 4 + 3 * 3  # one query per node, then the sampled groups' train messages


def test_the_runner_returns_the_results_in_the_order_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(THREE, {})
    _serve(monkeypatch, data)
    config = _config(tmp_path, "train.round_timeout=5")
    weights, order = _init(config, data.dim), ["c", "a", "b"]
    ours = flower.FlowerRunner(WireGrid(config, NODES), config, list(data.train))(weights, order, 1)  # type: ignore[arg-type]
    model = build_predictor(spec_of(config, data.dim))
    theirs = in_process_runner(model, data, plan_of(config), config.train.seed, torch.device("cpu"))(weights, order, 1)
    for mine, other in zip(ours, theirs, strict=True):
        assert all(torch.equal(mine.weights[k], other.weights[k]) for k in other.weights)
        assert (mine.samples, mine.loss, mine.steps, mine.trained) == (other.samples, other.loss, other.steps, other.trained)
    assert not torch.equal(ours[0].weights["head.weight"], ours[1].weights["head.weight"])  # groups differ: order is seen


def test_a_restarted_supernode_is_found_under_its_new_node_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group b's SuperNode restarts after its round-1 reply: round 2 asks the new node, and the run is the in-process one."""
    data = _data(THREE, {})
    _serve(monkeypatch, data)

    def restart_b(group: str, round_idx: int, reply: Message) -> Message | None:
        if group == "b" and round_idx == 1:
            grid.restart(101)  # NODES[1] holds b
        return reply

    config = _config(tmp_path, "output.name=flower", "train.clients_per_round=3", "train.round_timeout=5")
    grid = WireGrid(config, NODES, restart_b)
    ours = _flower_run(config, data, grid)
    assert 101 not in grid.get_node_ids()
    theirs = run(_config(tmp_path, "output.name=inprocess", "train.clients_per_round=3"), data=data, progress=False)
    assert _rows(ours) == _rows(theirs)
    assert grid.sent == 3 + 1 + 3 * 3  # the first queries, one to the restarted node, 3 rounds of 3 groups


def test_a_group_without_a_supernode_fails_the_round_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(THREE, {})
    _serve(monkeypatch, data)
    config = _config(tmp_path, "output.name=run", "train.clients_per_round=3", "train.round_timeout=0.3")
    with pytest.raises(flower.RewardRoundFailed, match=r"round 1: no SuperNode holds group\(s\) c after 0\.3 s"):
        _flower_run(config, data, WireGrid(config, NODES[:2]))


def test_a_failed_reply_fails_the_round_and_the_run_resumes_to_the_in_process_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group b's node errs in round 2 and group c's sends nothing: round 2 fails naming both; round 1 is
    checkpointed, and a resumed run on healthy nodes ends with the uninterrupted in-process model."""
    data = _data(THREE, {"u": 1})
    _serve(monkeypatch, data)

    def round_two_fails(group: str, round_idx: int, reply: Message) -> Message | None:
        if round_idx != 2 or group == "a":
            return reply
        return None if group == "c" else Message(Error(code=0, reason="out of memory"), reply_to=reply)

    config = _config(tmp_path, "output.name=cut", "train.clients_per_round=3", "train.round_timeout=0.5")
    with pytest.raises(flower.RewardRoundFailed) as failed:
        _flower_run(config, data, WireGrid(config, NODES, round_two_fails))
    assert str(failed.value) == (
        "round 2: group b: error from its SuperNode: out of memory; group c: no reply within train.round_timeout = 0.5 s"
    )
    cut = tmp_path / "cut"
    assert [r["round"] for r in _rows(cut)] == [0, 1] and (cut / "checkpoints" / "round_0001").is_dir()
    resumed = _flower_run(config, data, WireGrid(config, NODES), resume=cut)
    whole = run(_config(tmp_path, "output.name=whole", "train.clients_per_round=3"), data=data, progress=False)
    a, b = _final(resumed), _final(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert _rows(resumed) == _rows(whole)


# --------------------------------------------------------------------------- a real loopback federation

CHITCHAT = [
    "data.min_conversations=100",  # 3 participants with >= 100 two-turn conversations: 2 seen groups, 1 unseen
    "data.unseen_groups=1",
    "model.d_model=32",
    "model.layers=1",
    "model.heads=2",
    "model.context=8",
    "model.queries=8",
    "train.rounds=2",
    "train.device=cpu",
]


def test_the_cli_fails_clearly_when_no_superlink_listens(tmp_path: Path) -> None:
    port = local.free_port()
    result = firm_cli(
        "reward", "train", "train.engine=flower", f'train.superlink="127.0.0.1:{port}"', f'output.dir="{tmp_path.as_posix()}"'
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("firm: error: the Flower run wrote no ")
    assert f"is a SuperLink listening on 127.0.0.1:{port}" in result.stderr


@pytest.mark.slow  # a SuperLink, 2 SuperNodes and their workers importing torch, 2 Flower runs: ~1 min on 2 cores
def test_firm_reward_train_on_a_loopback_cluster_is_the_in_process_run(tmp_path: Path) -> None:
    """`firm reward train train.engine=flower` on chitchat: 2 SuperNodes (client-id 0 and 1, as `firm flower up`
    starts them) train the 2 seen groups; the run directory is the in-process run's, each node loaded its data
    once, and `--resume` of the run cut back to round 1 submits a new Flower run that ends where the first did."""
    with local.local_cluster(tmp_path / "state", 2, superlink=f"127.0.0.1:{local.free_port()}") as cluster:
        result = firm_cli(
            "reward",
            "train",
            *CHITCHAT,
            "train.engine=flower",
            f'train.superlink="{cluster.superlink}"',
            "train.round_timeout=120",
            f'output.dir="{tmp_path.as_posix()}"',
            "output.name=flower",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        ours = Path(result.stdout.strip().splitlines()[-1])
        assert ours == tmp_path / "flower"
        final = _final(ours)
        shutil.rmtree(ours / "checkpoints" / "round_0002")  # as if the run had stopped after round 1
        shutil.rmtree(ours / "model")
        (ours / "summary.json").unlink()
        resumed = firm_cli("reward", "train", "--resume", str(ours))
        logs = [(cluster.state_dir / f"worker-{i}.log").read_text() for i in range(2)]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    theirs = run(load_reward_config(None, [*CHITCHAT, f'output.dir="{tmp_path.as_posix()}"', "output.name=inprocess"]))
    a, b = _final(ours), _final(theirs)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and torch.equal(final[k], b[k]) for k in a)
    assert _rows(ours) == _rows(theirs)
    assert (ours / "checkpoints" / "round_0002").is_dir()
    for log in logs:  # two Flower runs, one data config: each warm worker loaded the data once
        assert log.count("reward node: loading the ratings") == 1, log[-2000:]
