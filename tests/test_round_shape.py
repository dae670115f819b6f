"""A new algorithm with another round shape runs on both engines with no engine change.

`SplitFedAvg`, defined here and registered for the test only, probes first and uploads two
payloads per client: the engines learn both from its `RoundShape`, never from its name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import firm.algorithms
from firm.aggregation import RunningMean, apply_mean_delta
from firm.algorithms import FedAvg
from firm.algorithms.protocol import Aggregator, ClientUpdate, RoundShape, ServerState
from firm.codec import Adapter, encode
from firm.config import Config
from firm.local_step import LocalProblem, Timer
from firm.train import run
from tests.conftest import tiny_config
from tests.test_flower_client import LoopbackGrid, _flower_config, _flower_run, _in_a_flower_task  # noqa: F401 (a fixture)

PROBE_STEP = 1_000_000


class _MeanGradient:
    """The clients' mean objective-averaged gradient: the probe aggregate."""

    def __init__(self, size: int) -> None:
        self.sum = torch.zeros(size, dtype=torch.float64)
        self.total = 0.0

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        (probe,) = [uploads] if isinstance(uploads, dict) else list(uploads)
        self.sum += weight * probe["g"].double()
        self.total += weight

    def update_drift(self) -> float:
        return 0.0


class _SumOfParts(RunningMean):
    """FedAvg's running mean of each client's delta, rebuilt from its two parts."""

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        first, second = list(uploads) if not isinstance(uploads, dict) else [uploads, {}]
        super().add([{name: first[name] + second[name] for name in first}], weight)


@dataclass
class SplitFedAvg:
    """FedAvg whose clients first send a gradient probe, and whose delta travels as two halves.

    The server's plan is the share of the first half (0.5: x / 2 + x / 2 == x exactly in floats, so
    the run must end with FedAvg's adapter); its state counts the plans it made.
    """

    inner: FedAvg
    name: str = "split"
    shape: ClassVar[RoundShape] = RoundShape(uploads=2, probes=True)

    @classmethod
    def from_config(cls, config: Config) -> SplitFedAvg:
        return cls(FedAvg.from_config(config))

    def client_probe(
        self, params: dict[str, torch.nn.Parameter], sample_problem: Callable[[int], LocalProblem], client_state: dict[str, Any]
    ) -> ClientUpdate:
        problem = sample_problem(PROBE_STEP)
        g = problem.objective_gradients().detach().to("cpu", torch.float32).mean(dim=0)
        return ClientUpdate([{"g": g}], problem.num_samples, [0.5, 0.5])

    def check_probe(self, uploads: Sequence[Adapter], size: int) -> str | None:
        ok = len(uploads) == 1 and set(uploads[0]) == {"g"} and uploads[0]["g"].shape == (size,)
        return None if ok and bool(torch.isfinite(uploads[0]["g"]).all()) else "rejected: not a split probe"

    def new_probe_aggregator(self, size: int) -> _MeanGradient:
        return _MeanGradient(size)

    def server_plan(self, probes: _MeanGradient, state: ServerState) -> tuple[Adapter, ServerState]:
        return {"share": torch.tensor([0.5])}, {"plans": int(state.get("plans", 0)) + 1}

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
        plan: Adapter | None = None,
    ) -> ClientUpdate:
        assert plan is not None, "the split's local steps need the server's plan"
        update = self.inner.client_update(params, sample_problem, client_state, timer)
        share = float(plan["share"])
        delta = update.upload
        update.uploads = [{n: t * share for n, t in delta.items()}, {n: t * (1 - share) for n, t in delta.items()}]
        return update

    def new_aggregator(self) -> _SumOfParts:
        return _SumOfParts()

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        assert isinstance(aggregator, RunningMean)
        return apply_mean_delta(global_adapter, aggregator, self.inner.server_lr)


@pytest.fixture
def split_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(firm.algorithms.REGISTRY, "split", SplitFedAvg.from_config)


def _state(run_dir: Path, round_idx: int) -> dict[str, Any]:
    return json.loads((run_dir / "checkpoints" / f"round_{round_idx:04d}" / "state.json").read_text())


@pytest.mark.usefixtures("split_registered", "_in_a_flower_task")
def test_a_new_round_shape_runs_on_both_engines_without_an_engine_change(tmp_path: Path) -> None:
    fedavg = run(tiny_config(tmp_path, "algorithm.name=fedavg", "output.name=fedavg"))
    ours = run(tiny_config(tmp_path, "algorithm.name=split", "output.name=split"))
    config = _flower_config(tmp_path / "flower", "algorithm.name=split", "output.name=split")
    flower = _flower_run(config, LoopbackGrid(config))
    for name, t in fedavg.final_adapter.items():  # two exact halves of FedAvg's delta, probed first: FedAvg's run
        assert torch.equal(ours.final_adapter[name], t), name
        assert (flower.final_adapter[name] - t).abs().max().item() < 1e-6, name
    adapter_bytes = ours.summary["adapter_bytes"]
    size = ours.summary["adapter_parameters"]
    probe_bytes = len(encode({"g": torch.zeros(size, dtype=torch.float32)}))
    plan_bytes = len(encode({"share": torch.zeros(1)}))
    for result in (ours, flower):
        for row in result.metrics:
            n = len(row["clients"])
            assert row["dropped"] == {} and row["server"]["plan"] == {"share": [0.5]}
        assert _state(result.run_dir, 2)["server_state"] == {"plans": 2}  # the loop kept and checkpointed it
    for row in ours.metrics:  # in process the payload sizes are exact: a probe and two adapter halves up, adapter + plan down
        n = len(row["clients"])
        assert row["comm"]["upload_bytes"] == n * (probe_bytes + 2 * adapter_bytes)
        assert row["comm"]["download_bytes"] == n * (adapter_bytes + plan_bytes)
