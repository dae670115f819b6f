"""data.seed: the held-out set, the partition and the held-out sampling seeds apart from the training seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm.config import ConfigError
from firm.data import data_seed, federated_prompts, split_prompts
from firm.train import run
from firm.validation import load_config, validate
from tests.conftest import tiny_config

DATA = [
    'data.sources=["builtin", "provocative"]',
    "data.partition=iid",
    "data.provocative_ratios=[]",
    "federation.num_clients=3",
    "eval.num_prompts=6",
]


def _texts(split):  # type: ignore[no-untyped-def]
    return [p.text for p in split.eval], [[p.text for p in shard] for shard in split.clients]


def test_minus_one_means_the_training_seed() -> None:
    config = load_config(None, [*DATA, "federation.seed=3"])
    assert config.data.seed == -1 and data_seed(config) == 3
    assert _texts(split_prompts(config)) == _texts(federated_prompts(config.data, 3, 6, 3))


def test_a_fixed_data_seed_keeps_the_split_when_the_training_seed_changes() -> None:
    splits = [split_prompts(load_config(None, [*DATA, "data.seed=0", f"federation.seed={s}"])) for s in (0, 1, 2)]
    assert _texts(splits[0]) == _texts(splits[1]) == _texts(splits[2])
    # and the data seed does change it (the check above could not pass by accident)
    moved = split_prompts(load_config(None, [*DATA, "data.seed=1", "federation.seed=0"]))
    assert _texts(moved) != _texts(splits[0])


def test_training_seeds_are_evaluated_on_the_same_prompts_and_sampling_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under one data seed, every held-out evaluation of every training seed gets the same prompts and seed."""
    import firm.train

    seen: dict[int, list[tuple[list[str], int]]] = {}
    real = firm.train.evaluate

    def recording(policy, objectives, prompts, samples, tokens, temperature, seed):  # type: ignore[no-untyped-def]
        seen.setdefault(current, []).append(([p.text for p in prompts], seed))
        return real(policy, objectives, prompts, samples, tokens, temperature, seed)

    monkeypatch.setattr(firm.train, "evaluate", recording)
    base = ["federation.rounds=1", "algorithm.local_steps=1", "data.seed=5"]
    for current in (1, 2):
        run(tiny_config(tmp_path, *base, f"federation.seed={current}", f"output.name=s{current}"))
    assert len(seen[1]) == len(seen[2]) == 2  # base and round 1
    assert seen[1] == seen[2]
    assert {seed for _, seed in seen[1]} == {5}


def test_a_negative_data_seed_other_than_minus_one_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data\.seed"):
        validate(load_config(None, ["data.seed=-2"]))
