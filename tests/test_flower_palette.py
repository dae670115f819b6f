"""The palette's statistics over Flower messages, without a cluster: FIRM's ClientApp answers in this process.

`_Grid` hands each message straight to `firm.engines.flower.apps.client_app` with its node's own
Context, as a SuperNode's worker would, so the questions, the node-side samples and the answers
are the real ones; only the network is missing. The loopback run (a real SuperLink and SuperNodes,
`firm train engine=flower palette.targets=...`) is tests/test_flower.py::test_palette_on_flower_matches_in_process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import ErrorCode
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from firm.config import Config
from firm.data import federated_prompts
from firm.engines.flower import palette as flower_palette
from firm.engines.flower.apps import client_app
from firm.engines.flower.palette import RECORD, solve_on_nodes, with_server_preference
from firm.engines.flower.records import config_to_run_config
from firm.objectives import resolve_objective
from firm.palette import PaletteInfeasible
from firm.palette.sampling import solve_federated
from firm.policy import build_policy
from firm.robust import RoundFailed
from firm.train import run
from tests.conftest import as_flower_task, tiny_config

NAMES = ["positiveness", "conciseness"]
Tamper = Callable[[int, ConfigRecord], None]


class _Grid:
    """A Grid over `num_nodes` in-process ClientApps (node ids 100 + client id); optionally tampering with answers."""

    def __init__(self, config: Config, num_nodes: int, tamper: Tamper | None = None) -> None:
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={"client-id": i},
                state=RecordDict(),
                run_config=config_to_run_config(config),
            )
            for i in range(num_nodes)
        }
        self.tamper = tamper
        self.replies: dict[str, Message] = {}
        self.answer_bytes = 0  # serialised bytes of every palette answer that came back
        self._ids = itertools.count()

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = f"m{next(self._ids)}"
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = client_app(message=message, context=context)
            except Exception as err:  # as Flower's executor does: an error reply naming the exception
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{err}"), reply_to=message)
            if not reply.has_error() and RECORD in reply.content.config_records:
                answer = reply.content.config_records[RECORD]
                if self.tamper is not None:
                    self.tamper(message.metadata.dst_node_id - 100, answer)
                self.answer_bytes += sum(len(o.deflate()) for o in get_all_nested_objects(answer).values())
            self.replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the sending task's identity (set by Flower inside a ServerApp process)."""
    as_flower_task(monkeypatch, node_id=0)


def _config(tmp_path: Path, targets: str, *overrides: str) -> Config:
    return tiny_config(tmp_path, f"palette.targets={targets}", "palette.prompts_per_client=6", *overrides)


def test_palette_over_messages_gives_the_in_process_lambda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantile and improvement targets: the same targets, lambda and rounds; each node samples once; bytes as sent."""
    config = _config(tmp_path, "positiveness=q0.7,conciseness=+0.01")
    fed = config.federation
    prompts = federated_prompts(config.data, fed.num_clients, config.eval.num_prompts, fed.seed)
    policy = build_policy(config.model, config.lora, fed.seed)
    expected, in_process = solve_federated(policy, [(n, resolve_objective(n)) for n in NAMES], prompts.clients, config)

    sampled: list[int] = []
    real = flower_palette.client_samples

    def counted(*args: object) -> object:
        sampled.append(int(args[3]))  # type: ignore[call-overload]
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(flower_palette, "client_samples", counted)
    grid = _Grid(config, 2)
    solution, federation = solve_on_nodes(grid, config)  # type: ignore[arg-type]

    assert expected.feasible and solution.feasible and expected.lam.min() > 0
    assert np.abs(solution.lam - expected.lam).max() <= 1e-9
    np.testing.assert_array_equal(solution.targets, expected.targets)  # the quantile from counts over messages
    assert federation.count_rounds == in_process.count_rounds > 0
    assert solution.extra["stat_rounds"] == expected.extra["stat_rounds"] and solution.num_samples == 2 * 6 * 4
    assert sorted(sampled) == [0, 1]  # one sampling per node, then every answer from its context.state
    assert solution.extra["stat_upload_bytes"] == grid.answer_bytes > expected.extra["stat_upload_bytes"]
    assert solution.extra["client_ids"] == [0, 1] and "not drawn on Flower" in solution.extra["region_skipped"]


def test_train_with_the_nodes_palette(tmp_path: Path) -> None:
    """firm.train.run's `palette_solve` hook: an infeasible palette stops before training, a feasible one trains with it."""
    grid = _Grid(_config(tmp_path, "positiveness=1.5"), 2)
    with pytest.raises(PaletteInfeasible, match="every reference sample has positiveness <="):
        run(_config(tmp_path, "positiveness=1.5", "output.name=bad"), palette_solve=partial(solve_on_nodes, grid))  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
    config = _config(tmp_path, "positiveness=+0.02", "federation.rounds=1", "algorithm=fedavg")
    result = run(config, palette_solve=partial(solve_on_nodes, _Grid(config, 2)))  # type: ignore[arg-type]
    pal = result.summary["palette"]
    assert pal["engine"] == "flower" and "region_skipped" in pal and pal["lambda"]["positiveness"] > 0
    assert result.summary["preference"] == [1.0, 0.0]  # only positiveness binds


def _doubled_total(client_id: int, answer: ConfigRecord) -> None:
    if client_id == 1 and "total" in answer:
        answer["total"] = 2 * float(str(answer["total"]))


def _nan_sum(client_id: int, answer: ConfigRecord) -> None:
    if client_id == 0 and "sum_r" in answer:
        answer["sum_r"] = [float("nan"), 0.0]


def _too_many_samples(client_id: int, answer: ConfigRecord) -> None:
    if "num_samples" in answer:
        answer["num_samples"] = 1e12


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (_doubled_total, "client 1's statistics are rejected: total 48 differs from the 24 samples it drew"),
        (_nan_sum, "client 0's statistics are rejected: non-finite sums"),
        (_too_many_samples, "claims 1e\\+12 reference samples"),
    ],
)
def test_implausible_answers_end_the_solve(tmp_path: Path, tamper: Tamper, fragment: str) -> None:
    config = _config(tmp_path, "positiveness=+0.02")
    with pytest.raises(RoundFailed, match=fragment):
        solve_on_nodes(_Grid(config, 2, tamper), config)  # type: ignore[arg-type]


def test_missing_node_is_refused_unless_min_clients_allows(tmp_path: Path) -> None:
    config = _config(tmp_path, "positiveness=+0.02", "engine.round_timeout=0.5")
    with pytest.raises(RoundFailed, match=r"palette: 1 of 2 clients drew reference samples, federation\.min_clients needs 2"):
        solve_on_nodes(_Grid(config, 1), config)  # type: ignore[arg-type]
    config = _config(tmp_path, "positiveness=+0.02", "engine.round_timeout=0.5", "federation.min_clients=1")
    solution, _ = solve_on_nodes(_Grid(config, 1), config)  # type: ignore[arg-type]
    assert solution.feasible and solution.extra["client_ids"] == [0] and solution.num_samples == 6 * 4


def test_server_preference_reaches_the_clients(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    assert with_server_preference(config, ConfigRecord({"round": 1})) is config
    moved = with_server_preference(config, ConfigRecord({"preference": [0.25, 0.75]}))
    assert moved.objectives.preference == (0.25, 0.75) and moved.objectives.preference_vector == (0.25, 0.75)
    for bad in ([0.5], [-1.0, 2.0], [float("nan"), 1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="the server's preference"):
            with_server_preference(config, ConfigRecord({"preference": bad}))
