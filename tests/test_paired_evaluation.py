"""Paired evaluation across algorithms (issue 17): every algorithm's held-out evaluation, at round 0 and at
every round, is taken on the same prompts with the same sampling settings and the same per-chunk seeds, so
two arms' per-prompt rewards can be differenced prompt by prompt (firm.report.claims.paired_separation).

Across training seeds: tests/test_data_seed.py; per-chunk seeds that do not depend on the adapter:
tests/test_evaluation_stats.py::test_every_chunk_draws_from_its_own_seed_whatever_the_adapter."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

import firm.evaluation
import firm.train
from firm.train import run
from tests.conftest import tiny_config

ALGORITHMS = ("firm", "fedavg", "mgda")


def test_every_algorithm_and_round_is_evaluated_on_the_same_prompts_and_sampling_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluations: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []  # the evaluation in progress: its chunks' generator seeds go here
    real_evaluate, real_sample = firm.train.evaluate, firm.evaluation.sample
    signature = inspect.signature(real_evaluate)

    def recording_evaluate(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        record = {
            "prompts": [p.text for p in bound["prompts"]],
            **{k: bound[k] for k in ("samples_per_prompt", "max_new_tokens", "temperature", "seed")},
            "chunk_seeds": [],
        }
        evaluations.setdefault(algorithm, []).append(record)
        current.append(record)
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            current.pop()

    def recording_sample(*args: Any, **kwargs: Any) -> Any:
        if current:  # a held-out evaluation's draw, not a training rollout's
            generator: torch.Generator = kwargs["generator"] if "generator" in kwargs else args[5]
            current[-1]["chunk_seeds"].append(generator.initial_seed())
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(firm.train, "evaluate", recording_evaluate)
    monkeypatch.setattr(firm.evaluation, "sample", recording_sample)
    for algorithm in ALGORITHMS:
        run(
            tiny_config(
                tmp_path,
                "federation.rounds=2",
                "algorithm.local_steps=1",
                f"algorithm.name={algorithm}",
                f"output.name={algorithm}",
            )
        )

    first = evaluations[ALGORITHMS[0]][0]
    assert len(first["prompts"]) == 4 and first["chunk_seeds"]  # eval.num_prompts=4, sampled from seeded generators
    for algorithm in ALGORITHMS:
        assert len(evaluations[algorithm]) == 3  # round 0 (the base model), rounds 1 and 2
        assert all(record == first for record in evaluations[algorithm]), algorithm
