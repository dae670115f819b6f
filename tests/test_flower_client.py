"""The Flower ClientApp's side without a cluster: the warm worker's policy cache, probe screening on both engines.

These call the ClientApp's functions (`runtime`) and the engines' screening directly, with crafted
inputs, so each check is fast and fails on exactly the defect it names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from firm.algorithms.protocol import ClientUpdate
from firm.config import Config
from firm.engines.flower import apps
from firm.engines.flower.engine import FlowerEngine
from firm.engines.flower.records import adapter_to_record, config_to_run_config, record_to_adapter
from firm.policy import Policy, build_policy
from firm.robust import RoundFailed
from firm.train import RunResult, run
from tests.conftest import as_flower_task, tiny_config
from tests.memory_grid import MemoryGrid
from tests.test_reliability import engine_with


@pytest.fixture(autouse=True)
def _in_a_flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's messages take their run id from the process's task identity, set by Flower in a real ServerApp."""
    as_flower_task(monkeypatch)
    monkeypatch.setattr(apps, "_RUNTIME", None)


def _context(client_id: int = 0, config: Config | None = None, state_dir: Path | None = None) -> Context:
    run_config = config_to_run_config(config) if config is not None else {}
    node_config: dict[str, Any] = {"client-id": client_id, **({"state-dir": str(state_dir)} if state_dir else {})}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)  # type: ignore[arg-type]


def _base_weights(policy: Policy) -> dict[str, torch.Tensor]:
    """The frozen base model's tensors (everything but the LoRA adapter)."""
    return {n: p.detach() for n, p in policy.model.named_parameters() if not p.requires_grad}


# --------------------------------------------------------------------------- the warm worker's policy cache


def test_warm_worker_builds_a_new_policy_when_the_seed_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's base weights come from federation.seed: two runs with different seeds in one
    worker process must each get the weights of their own seed, not the first run's."""
    first = apps.runtime(tiny_config(tmp_path, "federation.seed=0"), _context())
    second = apps.runtime(tiny_config(tmp_path, "federation.seed=1"), _context())
    config = tiny_config(tmp_path, "federation.seed=1")
    fresh = _base_weights(build_policy(config.model, config.lora, config.federation.seed))
    got = _base_weights(second.policy)
    assert list(got) == list(fresh)
    assert all(torch.equal(got[n], fresh[n]) for n in fresh), "the worker kept the seed-0 base model for a seed-1 run"
    assert not all(torch.equal(a, b) for a, b in zip(_base_weights(first.policy).values(), got.values(), strict=True))
    again = apps.runtime(tiny_config(tmp_path, "federation.seed=1", "federation.rounds=5"), _context())
    assert again.policy is second.policy  # same model, LoRA and seed: the loaded policy is kept


# --------------------------------------------------------------------------- an in-process Grid


Tamper = Callable[["LoopbackGrid", int, int, str, Message], Message | None]
"""(grid, client id, round, stage, reply) -> the reply the server receives, or None for none
(the node died before replying): fault injection on the wire and on the nodes."""


class LoopbackGrid(MemoryGrid):
    """A `MemoryGrid` whose SuperNodes are this process's policy ClientApp functions (`client_query` /
    `client_train`), so `firm.train.run` with the real `FlowerEngine` runs a whole Flower run in
    seconds; `tamper` changes replies on the way back. `restart` gives a client a new node id and a
    fresh Context (an empty `context.state`): what a SuperNode restart does; its disk (`state-dir`) stays.
    """

    def __init__(self, config: Config, tamper: Tamper | None = None) -> None:
        self.config = config
        super().__init__({100 + c: self.node_context(c) for c in range(config.federation.num_clients)})
        self.tamper = tamper

    def node_context(self, client_id: int) -> Context:
        """A node's context as a SuperNode starts it: a fresh `context.state`; its disk is `output.dir/nodes/<id>`."""
        return _context(client_id, self.config, Path(self.config.output.dir) / "nodes" / str(client_id))

    def restart(self, client_id: int) -> None:
        """The client's SuperNode goes away and comes back under a new node id, with a fresh context."""
        (old,) = [node for node, ctx in self.contexts.items() if ctx.node_config["client-id"] == client_id]
        del self.contexts[old]
        self.contexts[max(self.contexts, default=0) + 100] = self.node_context(client_id)

    def answer(self, message: Message, context: Context) -> Message | None:
        if message.metadata.message_type == MessageType.QUERY:
            return apps.client_query(message, context)
        reply = apps.client_train(message, context)
        if self.tamper is not None:
            meta = message.content.config_records["firm.round"]
            client_id, round_idx, stage = int(str(meta["client_id"])), int(str(meta["round"])), str(meta["stage"])
            reply = self.tamper(self, client_id, round_idx, stage, reply)
        return reply


def _flower_config(tmp_path: Path, *overrides: str) -> Config:
    return tiny_config(tmp_path, "engine=flower", "engine.round_timeout=5", *overrides)


def _flower_run(config: Config, grid: LoopbackGrid) -> RunResult:
    return run(config, engine=partial(FlowerEngine, grid))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parity in memory


@pytest.mark.parametrize("algorithm", ["fedavg", "mgda"])
def test_flower_messages_match_in_process_for_the_other_one_payload_algorithms(tmp_path: Path, algorithm: str) -> None:
    """The real FlowerEngine and ClientApp, their Messages answered in this process: the adapter, eval
    rows and clients are the in-process run's. tests/test_flower.py runs each round shape on a loopback
    cluster (one payload: firm; M payloads: fmgda; a probe first: fedcmoo); fedavg and mgda send what
    firm sends, so they are checked here, without the ~15 s of CPU a loopback ServerApp costs."""
    config = _flower_config(tmp_path / "flower", f"algorithm={algorithm}", "output.name=run")
    ours = _flower_run(config, LoopbackGrid(config))
    theirs = run(tiny_config(tmp_path / "inprocess", f"algorithm={algorithm}", "output.name=run"))
    assert list(ours.final_adapter) == list(theirs.final_adapter)
    assert max((ours.final_adapter[k] - t).abs().max().item() for k, t in theirs.final_adapter.items()) < 1e-6
    assert any((t != 0).any() for k, t in theirs.final_adapter.items() if "lora_B" in k)  # it trained
    assert [r["clients"] for r in ours.metrics] == [r["clients"] for r in theirs.metrics]
    for mine, other in zip(ours.metrics, theirs.metrics, strict=True):
        assert mine["dropped"] == {} and mine["eval"] == pytest.approx(other["eval"], abs=1e-6)


# --------------------------------------------------------------------------- a node lost for good


def test_a_lost_node_fails_the_run_clearly_when_all_are_required(tmp_path: Path) -> None:
    """Client 1's node stops replying after round 1 and min_clients = 0 (every sampled client): round 2
    fails naming the reason, with no partial row, round 1 checkpointed, and no final adapter. (The
    completing side, min_clients = 1, is tests/test_flower.py's loopback run with a SIGKILLed node.)"""

    def dies_after_round_one(grid: LoopbackGrid, client_id: int, round_idx: int, stage: str, reply: Message) -> Message | None:
        return None if client_id == 1 and round_idx >= 2 else reply

    config = _flower_config(tmp_path, "federation.rounds=3", "engine.round_timeout=0.5", "output.name=run")
    with pytest.raises(RoundFailed) as failed:
        _flower_run(config, LoopbackGrid(config, dies_after_round_one))
    assert "round 2 (train): 1 of 2 sampled clients returned an update" in str(failed.value)
    assert "federation.min_clients needs 2" in str(failed.value) and "no reply within engine.round_timeout" in str(failed.value)
    run_dir = tmp_path / "run"
    assert [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 1
    assert (run_dir / "checkpoints" / "round_0001").is_dir()
    assert not (run_dir / "final_adapter").exists()


# --------------------------------------------------------------------------- 8. probes are screened


def _probe(reply: Message) -> dict[str, torch.Tensor]:
    return record_to_adapter(reply.content.array_records["upload.0"])


def _with_probe(reply: Message, probe: dict[str, torch.Tensor]) -> Message:
    reply.content["upload.0"] = adapter_to_record(probe)
    return reply


def _negative_index(reply: Message) -> Message:
    probe = _probe(reply)
    probe["indices_0"] = probe["indices_0"].clone()
    probe["indices_0"][0] = -1  # would wrap to the last coordinate
    return _with_probe(reply, probe)


def _index_out_of_range(reply: Message) -> Message:
    probe = _probe(reply)
    probe["indices_1"] = probe["indices_1"].clone()
    probe["indices_1"][-1] = 10**7
    return _with_probe(reply, probe)


def _nan_value(reply: Message) -> Message:
    probe = _probe(reply)
    probe["values_0"] = probe["values_0"].clone()
    probe["values_0"][0] = float("nan")
    return _with_probe(reply, probe)


def _no_update_record(reply: Message) -> Message:
    del reply.content["firm.update"]
    return reply


def _missing_objective(reply: Message) -> Message:
    probe = _probe(reply)
    del probe["values_1"], probe["indices_1"]
    return _with_probe(reply, probe)


PROBE_FAULTS = {  # client id -> what its probe reply carries, and what the reason must name
    1: (_negative_index, "indices_0 are not strictly increasing"),  # would wrap onto the last coordinate
    2: (_index_out_of_range, "indices_1 are not strictly increasing"),  # crashed the server's decompression
    3: (_nan_value, "values_0 has NaN"),  # was averaged into the Gram estimate
    4: (_no_update_record, "malformed reply"),  # crashed the round
    5: (_missing_objective, "missing ['indices_1', 'values_1']"),  # crashed the round
}

FEDCMOO_3 = ["algorithm.name=fedcmoo", "federation.num_clients=3", "federation.clients_per_round=3", "federation.min_clients=2"]


def test_bad_flower_probes_drop_their_clients_and_the_round_goes_on(tmp_path: Path) -> None:
    """Seven clients, five with a broken probe reply (one fault each): the five are dropped with the
    reason, the two honest ones plan the round and their updates are averaged."""

    def tamper(grid: LoopbackGrid, client_id: int, round_idx: int, stage: str, reply: Message) -> Message:
        return PROBE_FAULTS[client_id][0](reply) if stage == "probe" and client_id in PROBE_FAULTS else reply

    clients = ["federation.num_clients=7", "federation.clients_per_round=7", "federation.min_clients=2"]
    config = _flower_config(tmp_path, "algorithm.name=fedcmoo", *clients, "federation.rounds=1", "output.name=run")
    (row,) = _flower_run(config, LoopbackGrid(config, tamper)).metrics
    assert sorted(row["dropped"]) == [str(c) for c in PROBE_FAULTS]
    for client_id, (_, reason) in PROBE_FAULTS.items():
        why = row["dropped"][str(client_id)]
        assert why.startswith("rejected: ") and reason in why, (client_id, why)
    assert sorted(row["weights"]) == ["0", "6"]


def test_a_bad_in_process_probe_drops_the_client(tmp_path: Path) -> None:
    """The in-process probe path screens the same way (before: finiteness only, so a negative index wrapped)."""

    def negative_index(round_idx: int, client_id: int, call: Any) -> ClientUpdate:
        update = call()
        if client_id == 1 and getattr(call, "func", None).__name__ == "client_probe":  # type: ignore[union-attr]
            update.uploads[0]["indices_0"][0] = -1
        return update

    result = run(tiny_config(tmp_path, *FEDCMOO_3, "federation.rounds=1", "output.name=run"), engine=engine_with(negative_index))
    (row,) = result.metrics
    assert list(row["dropped"]) == ["1"] and "indices_0" in row["dropped"]["1"], row["dropped"]


def test_probe_screen_checks_counts_and_norms_like_updates() -> None:
    """screen_probes on crafted probes (d = 10, M = 2, k = 3): the layout check, the count, the norm screen."""
    from firm.algorithms.fedcmoo import check_probe
    from firm.robust import Candidate, screen_probes

    def probe(scale: float) -> dict[str, torch.Tensor]:
        idx = torch.tensor([1, 4, 7], dtype=torch.int32)
        return {
            "values_0": torch.full((3,), scale),
            "indices_0": idx,
            "values_1": torch.full((3,), -scale),
            "indices_1": idx,
        }

    def check(uploads: Any) -> str | None:
        return check_probe(uploads, num_objectives=2, size=10, k=3)

    candidates = [
        Candidate(0, [probe(1.0)], 8.0),
        Candidate(1, [probe(1.2)], 8.0),
        Candidate(2, [probe(0.9)], 8.0),
        Candidate(3, [probe(50.0)], 8.0),  # norm 50 x sqrt(6) > 10 x the median sqrt(6)
        Candidate(4, [probe(1.0)], 1e6),  # claims more samples than asked
        Candidate(5, [{**probe(1.0), "indices_1": torch.tensor([1, 1, 7], dtype=torch.int32)}], 8.0),  # repeated index
    ]
    passed, rejected = screen_probes(candidates, check, expected_samples=8.0, max_norm_ratio=10.0)
    assert [c.client_id for c in passed] == [0, 1, 2]
    assert sorted(rejected) == [3, 4, 5]
    assert "norm" in rejected[3] and "reports 1e+06 samples" in rejected[4] and "indices_1" in rejected[5]
    assert check([probe(1.0), probe(1.0)]) == "rejected: 2 probe payloads, expected 1"
    assert "shapes (4,)" in str(
        check([{**probe(1.0), "values_0": torch.ones(4), "indices_0": torch.arange(4, dtype=torch.int32)}])
    )
