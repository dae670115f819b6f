"""`learned:<path>` objectives: a `firm reward train` model scores (prompt, reply) pairs; bad model directories are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from firm.config import ConfigError
from firm.objectives import bind_client, display_name, resolve_objective, validate_config
from firm.rewards.config import load_reward_config
from firm.rewards.episodes import GroupData
from firm.rewards.train import RewardData, run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPO trained for one round on random 384-d 'MiniLM' embeddings of two groups."""
    rng = np.random.default_rng(0)
    groups = {}
    for name in ("ga", "gb"):
        x = torch.tensor(rng.standard_normal((24, 384)), dtype=torch.float32)
        groups[name] = GroupData(name, x, torch.tensor(rng.integers(1, 11, size=24)), tuple(f"q{i % 3}" for i in range(24)))
    data = RewardData(
        {n: g.take(range(18)) for n, g in groups.items()},
        {n: g.take(range(18, 24)) for n, g in groups.items()},
        {},
        {"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384},
        "interesting",
    )
    out = tmp_path_factory.mktemp("reward")
    cfg = load_reward_config(
        None,
        [
            f'output.dir="{out.as_posix()}"',
            "output.name=r",
            "model.d_model=16",
            "model.heads=2",
            "model.layers=1",
            "model.context=4",
            "model.queries=4",
            "train.rounds=1",
            "train.device=cpu",
        ],
    )
    return run(cfg, data=data, progress=False) / "model"


def test_learned_scores_are_in_the_unit_interval_and_depend_on_the_group(model_dir: Path) -> None:
    population = resolve_objective(f"learned:{model_dir}")
    ga = resolve_objective(f"learned:{model_dir}@ga")
    prompts, replies = ["What superpower do you wish you had?"] * 2, ["Flying, to see the world.", ""]
    values = list(population(prompts, replies))
    assert 0.0 <= values[0] <= 1.0 and values[1] == 0.0
    group_value = list(ga(prompts, replies))
    assert group_value[0] != pytest.approx(values[0], abs=1e-7)


def test_each_client_gets_its_own_group_under_at_clients(model_dir: Path) -> None:
    fn = resolve_objective(f"learned:{model_dir}@clients")
    bound = [bind_client([("l", fn)], i)[0][1] for i in range(3)]
    assert [b.group for b in bound] == ["ga", "gb", "ga"]  # type: ignore[attr-defined]


def test_bad_model_directories_are_one_line_config_errors(model_dir: Path, tmp_path: Path) -> None:
    def check(name: str, match: str) -> None:
        cfg = tiny_config(tmp_path)
        import dataclasses

        cfg = dataclasses.replace(
            cfg, objectives=dataclasses.replace(cfg.objectives, names=("positiveness", name), preference=())
        )
        with pytest.raises(ConfigError, match=match) as err:
            validate_config(cfg)
        assert "\n" not in str(err.value)

    check(f"learned:{tmp_path / 'missing'}", "no such directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predictor.json").write_text("{not json", encoding="utf-8")
    check(f"learned:{broken}", "unreadable")
    other = tmp_path / "other"
    other.mkdir()
    info = json.loads((model_dir / "predictor.json").read_text())
    info["embedding"] = {"model": "some/other-encoder", "dim": 768}
    (other / "predictor.json").write_text(json.dumps(info), encoding="utf-8")
    check(f"learned:{other}", "trained on embeddings of 'some/other-encoder'")
    check(f"learned:{model_dir}@nobody", "no group 'nobody'")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("learned:runs/reward-federated-1/model", "learned:reward-federated-1"),
        ("learned:runs/r1/model@clients", "learned:r1@clients"),
        ("learned:/abs/path/r2/model@g7", "learned:r2@g7"),
        ("learned:mydir", "learned:mydir"),
        ("helpfulness", "helpfulness"),
        ("a_very_long_objective_name", "a_very_long_obj~"),
    ],
)
def test_progress_labels_name_the_reward_run(name: str, label: str) -> None:
    assert display_name(name) == label


def test_a_tiny_firm_train_runs_on_a_learned_objective(model_dir: Path, tmp_path: Path) -> None:
    """`learned:<path>@clients` beside another objective, end to end: every client scores with its own group, the
    held-out evaluation with the population's, and the figures are rewards in [0, 1]."""
    from firm.train import run as train

    result = train(tiny_config(tmp_path, f'objectives.names=["positiveness", "learned:{model_dir.as_posix()}@clients"]'))
    name = f"learned:{model_dir.as_posix()}@clients"
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= row["eval"][name] <= 1.0
        assert all(0.0 <= step["reward"][1] <= 1.0 for steps in row["local"].values() for step in steps)
    assert result.summary["final_eval"][name] != result.summary["initial_eval"][name]  # the policy moved, the score followed
