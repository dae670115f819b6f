"""Sweeps take the round-0 evaluation once per kept policy (firm.train._BASE_EVALS), with the same figures."""

from __future__ import annotations

from pathlib import Path

import pytest

import firm.train
from firm.train import release_models, run
from tests.conftest import tiny_config


def test_round_zero_evaluation_is_taken_once_and_equals_a_fresh_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = firm.train.evaluate

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(firm.train, "evaluate", counting)
    release_models()
    overrides = ("federation.rounds=1", "eval.every=1")
    first = run(tiny_config(tmp_path, *overrides, "output.name=a"), reuse_model=True)
    assert len(calls) == 2  # round 0 and round 1
    second = run(tiny_config(tmp_path, *overrides, "output.name=b", "algorithm.name=fedavg"), reuse_model=True)
    assert len(calls) == 3  # round 1 only: round 0 came from the first run
    assert second.summary["initial_eval"] == first.summary["initial_eval"]
    assert second.summary["initial_eval_prompt_means"] == first.summary["initial_eval_prompt_means"]
    release_models()
    fresh = run(tiny_config(tmp_path, *overrides, "output.name=c", "algorithm.name=fedavg"))  # its own evaluation
    assert len(calls) == 5
    assert fresh.summary["initial_eval"] == first.summary["initial_eval"]
    other_eval = run(tiny_config(tmp_path, *overrides, "output.name=d", "eval.samples_per_prompt=1"), reuse_model=True)
    assert len(calls) == 7  # another evaluation setting is not a hit
    assert other_eval.summary["initial_eval"] != first.summary["initial_eval"]
    release_models()
