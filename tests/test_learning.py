"""Slow: training measurably moves the targeted objective on the tiny model (run with `make test-slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import firm
from tests.conftest import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("alg", ["fedavg", "firm"])
def test_positiveness_rises_when_preferred(tmp_path: Path, alg: str) -> None:
    # p = (1, 0): only positiveness matters to FedAvg; FIRM's anchor pulls its weights there too.
    config = tiny_config(
        tmp_path,
        f"algorithm.name={alg}",
        "objectives.preference=[1, 0]",
        "algorithm.reg=5.0",
        "algorithm.lr=0.02",
        "federation.num_clients=4",
        "federation.rounds=12",
        "rollout.prompts_per_step=4",
        "rollout.max_new_tokens=24",
        "eval.num_prompts=16",
        "eval.samples_per_prompt=4",
    )
    result = firm.run(config)
    initial = result.summary["initial_eval"]["positiveness"]
    late = sum(m["eval"]["positiveness"] for m in result.metrics[-4:]) / 4
    assert late > initial + 0.03, (initial, [m["eval"]["positiveness"] for m in result.metrics])
