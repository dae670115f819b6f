"""Preference sweeps: the simplex grid, one run per point, resume without redoing finished points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firm.config import ConfigError
from firm.sweep import preference_grid, sweep
from tests.conftest import firm_cli, tiny_config


def test_preference_grid() -> None:
    assert preference_grid(2, 4) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    grid3 = preference_grid(3, 2)  # the 6 points k / 2 with k1 + k2 + k3 = 2
    assert len(grid3) == 6 and all(abs(sum(p) - 1.0) < 1e-12 for p in grid3)
    assert (0.5, 0.5, 0.0) in grid3 and (0.0, 0.0, 1.0) in grid3
    with pytest.raises(ValueError):
        preference_grid(2, 0)


def test_sweep_runs_every_point_and_resumes(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "output.name=sw")
    # (1, 0) and (0, 1) are fine preferences: the weights lie on the simplex's vertices.
    result = sweep(config, ["firm", "fedavg"], divisions=2)
    root = Path(result["path"])
    assert [(p["algorithm"], p["preference"]) for p in result["points"]] == [
        (alg, pref) for alg in ("firm", "fedavg") for pref in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0])
    ]
    assert all(p["status"] == "completed" and set(p["final_eval"]) == {"positiveness", "conciseness"} for p in result["points"])
    saved = json.loads((root / "sweep.json").read_text())
    assert saved["points"] == result["points"]
    pareto = saved["pareto"]  # hypervolume per algorithm, with the normalisation and reference beside it
    assert set(pareto["hypervolume"]) == {"firm", "fedavg"} and all(0.0 <= v <= 1.0 for v in pareto["hypervolume"].values())
    assert len(pareto["scales"]) == 2 and len(pareto["reference"]) == 2  # the base model, the same in every point
    first_metrics = (root / "firm-p00" / "metrics.jsonl").read_text()

    # Simulate a crash: one point never completed. Resuming reruns only that point.
    (root / "fedavg-p01" / "summary.json").unlink()
    stamp = (root / "firm-p00" / "summary.json").stat().st_mtime_ns
    again = sweep(config, ["firm", "fedavg"], divisions=2)
    assert (root / "firm-p00" / "summary.json").stat().st_mtime_ns == stamp  # not redone
    assert (root / "firm-p00" / "metrics.jsonl").read_text() == first_metrics

    def figures(points: list[dict]) -> list[dict]:
        return [{k: v for k, v in p.items() if k != "wall_time_s"} for p in points]

    assert figures(again["points"]) == figures(result["points"])  # the rerun point reproduces its figures (same seed)


def test_sweep_refuses_a_directory_with_another_config(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "output.name=sw")
    sweep(config, ["fedavg"], divisions=1)
    other = tiny_config(tmp_path, "federation.rounds=2", "algorithm.local_steps=1", "output.name=sw")
    with pytest.raises(ConfigError, match="different config"):
        sweep(other, ["fedavg"], divisions=1)
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        sweep(config, ["nope"], divisions=1)


def test_sweep_cli(tmp_path: Path) -> None:
    args = [
        "sweep", "--algorithms", "fedavg", "--divisions", "1",
        "model.name=tiny", 'objectives.names=["positiveness", "conciseness"]', 'data.sources=["builtin"]',
        "data.partition=iid", "data.provocative_ratios=[]", "federation.num_clients=2", "federation.clients_per_round=1",
        "federation.rounds=1", "algorithm.local_steps=1", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4", "eval.num_prompts=2", f'output.dir="{tmp_path.as_posix()}"', "output.name=cli",
    ]  # fmt: skip
    proc = firm_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "sweep directory:" in proc.stdout and proc.stdout.count("fedavg") >= 2
    assert (tmp_path / "cli" / "sweep.json").is_file()
    bad = firm_cli(*args[:2], "nope", *args[3:])
    assert bad.returncode == 2 and "unknown algorithm 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_sweep_refuses_a_setting_one_of_its_algorithms_refuses_before_any_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "aggregation.clip_norm=1", "output.name=sw")
    with pytest.raises(ConfigError, match=r"aggregation\.clip_norm: fmgda does not clip"):
        sweep(config, ["firm", "fmgda"], divisions=1)
    assert not (tmp_path / "sw" / "firm-p00").exists()  # not found out after the firm points had run
