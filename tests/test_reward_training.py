"""Federated training of the preference predictor (firm.rewards): server rules, engines' equivalences, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from firm.config import ConfigError
from firm.rewards.config import load_reward_config
from firm.rewards.episodes import GroupData
from firm.rewards.server import ServerOptimizer
from firm.rewards.train import RewardData, resume_run, run, sample_groups
from tests.conftest import firm_cli


def _groups(tastes: dict[str, int], dim: int = 8, items: int = 48, seed: int = 0) -> dict[str, GroupData]:
    """Synthetic groups over 4 embedding clusters: taste +1 rates clusters 0-1 high (9) and 2-3 low (2); -1 the reverse."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:4] * 3.0
    out = {}
    for name, taste in tastes.items():
        cluster = rng.integers(0, 4, size=items)
        x = centres[cluster] + 0.3 * rng.standard_normal((items, dim))
        high = cluster < 2 if taste > 0 else cluster >= 2
        y = np.where(high, 9, 2)
        questions = tuple(f"q{c}" for c in cluster)
        out[name] = GroupData(name, torch.tensor(x, dtype=torch.float32), torch.tensor(y), questions)
    return out


def _data(tastes: dict[str, int], unseen: dict[str, int], **kw: int) -> RewardData:
    groups = _groups({**tastes, **unseen}, **kw)
    train, test = {}, {}
    for name in tastes:
        g = groups[name]
        cut = int(len(g) * 0.75)
        train[name], test[name] = g.take(range(cut)), g.take(range(cut, len(g)))
    dim = next(iter(groups.values())).x.shape[1]
    return RewardData(train, test, {n: groups[n] for n in unseen}, {"model": "synthetic", "dim": dim}, "synthetic")


def _config(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    base = [
        f'output.dir="{tmp_path.as_posix()}"',
        "model.d_model=32",
        "model.layers=1",
        "model.heads=2",
        "model.hidden=32",
        "model.context=8",
        "model.queries=8",
        "train.rounds=3",
        "train.clients_per_round=2",
        "train.lr=3e-3",
        "train.device=cpu",
    ]
    return load_reward_config(None, [*base, *overrides])


def _final(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    return safetensors.torch.load_file(str(path / "model" / "predictor.safetensors"))


def test_fedavg_is_the_sample_weighted_mean_exactly() -> None:
    w0 = {"a": torch.zeros(3), "b": torch.ones(2)}
    server = ServerOptimizer(w0, "fedavg", lr=1.0)
    u1 = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.0, 0.0])}
    u2 = {"a": torch.tensor([4.0, 5.0, 6.0]), "b": torch.tensor([3.0, 3.0])}
    server.step([(u1, 1.0), (u2, 3.0)])
    assert torch.equal(server.weights["a"], torch.tensor([3.25, 4.25, 5.25]))
    assert torch.equal(server.weights["b"], torch.tensor([2.25, 2.25]))


def test_fedadam_first_step_matches_the_hand_formula() -> None:
    # Adam with bias correction, first step: m_hat = Delta, v_hat = Delta^2, w <- w - lr Delta / (|Delta| + tau)
    w0 = {"a": torch.tensor([1.0, -2.0])}
    server = ServerOptimizer(w0, "fedadam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    server.step([({"a": torch.tensor([0.5, -1.0])}, 1.0)])
    delta = torch.tensor([0.5, -1.0])  # w0 - mean
    expected = torch.tensor([1.0, -2.0]) - 0.1 * delta / (delta.abs() + 1e-3)
    assert torch.allclose(server.weights["a"], expected, atol=1e-6)


def test_fedavgm_accumulates_momentum() -> None:
    server = ServerOptimizer({"a": torch.tensor([0.0])}, "fedavgm", lr=1.0, momentum=0.5)
    server.step([({"a": torch.tensor([1.0])}, 1.0)])  # Delta = -1, buf = -1, w = 1
    server.step([({"a": torch.tensor([1.0])}, 1.0)])  # Delta = 0, buf = 0.5 * -1 + 0 = -0.5, w = 1.5
    assert server.weights["a"].item() == pytest.approx(1.5)


def test_client_sampling_is_seeded_and_without_replacement() -> None:
    names = [f"g{i:02d}" for i in range(10)]
    a = sample_groups(names, 4, seed=0, round_idx=1)
    assert a == sample_groups(names, 4, seed=0, round_idx=1) and len(set(a)) == 4 and a == sorted(a)
    assert any(sample_groups(names, 4, seed=0, round_idx=r) != a for r in range(2, 6))
    assert sample_groups(names, 20, seed=0, round_idx=1) == names


def test_federated_equals_centralized_for_one_client_and_one_local_epoch(tmp_path: Path) -> None:
    data = _data({"a": 1}, {})
    fed = run(
        _config(tmp_path, "output.name=fed", "train.mode=federated", "train.clients_per_round=1"), data=data, progress=False
    )
    cen = run(_config(tmp_path, "output.name=cen", "train.mode=centralized"), data=data, progress=False)
    a, b = _final(fed), _final(cen)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (fed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]


@pytest.mark.parametrize("server", ["fedavg", "fedadam"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    data = _data({"a": 1, "b": -1, "c": 1}, {"u": 1})
    whole = run(
        _config(
            tmp_path,
            "output.name=whole",
            f"train.server={server}",
            "train.server_lr=0.05" if server == "fedadam" else "train.server_lr=1.0",
        ),
        data=data,
        progress=False,
    )
    calls = {"n": 0}
    original = ServerOptimizer.step

    def crash_on_third(self: ServerOptimizer, updates):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, updates)

    monkeypatch.setattr(ServerOptimizer, "step", crash_on_third)
    cfg = _config(
        tmp_path,
        "output.name=cut",
        f"train.server={server}",
        "train.server_lr=0.05" if server == "fedadam" else "train.server_lr=1.0",
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg, data=data, progress=False)
    monkeypatch.setattr(ServerOptimizer, "step", original)
    cut = resume_run(tmp_path / "cut", data=data, progress=False)
    a, b = _final(whole), _final(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    whole_rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["seen"]["mean"] for r in rows] == [r["seen"]["mean"] for r in whole_rows]


def test_unseen_group_conditioning_beats_the_global_model(tmp_path: Path) -> None:
    """Seen groups split between two opposite tastes: only a group's context says which it has, so on an unseen
    group GPO (conditioned on its context) aligns better than the context-free regression (the global model)."""
    data = _data({"a": 1, "b": 1, "c": -1, "d": -1}, {"u": -1}, items=64)
    common = ["train.rounds=20", "train.clients_per_round=4", "train.local_epochs=2", "train.checkpoint_every=0"]
    gpo = run(_config(tmp_path, "output.name=gpo", "model.kind=gpo", *common), data=data, progress=False)
    reg = run(_config(tmp_path, "output.name=reg", "model.kind=regression", *common), data=data, progress=False)
    g = json.loads((gpo / "summary.json").read_text())["final"]["unseen"]["mean"]
    r = json.loads((reg / "summary.json").read_text())["final"]["unseen"]["mean"]
    assert g > r + 0.1, (g, r)


def test_local_mode_trains_one_model_per_group(tmp_path: Path) -> None:
    data = _data({"a": 1, "b": -1}, {})
    path = run(_config(tmp_path, "output.name=loc", "train.mode=local", "train.rounds=6"), data=data, progress=False)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["final"]["seen"]["mean"] > summary["initial"]["seen"]["mean"]


def test_local_mode_with_unseen_groups_reports_only_the_seen_ones(tmp_path: Path) -> None:
    """An unseen group has no model of its own in local mode: it is left out of the evaluation, not a crash."""
    data = _data({"a": 1, "b": -1}, {"c": 1})
    path = run(_config(tmp_path, "output.name=loc", "train.mode=local", "train.rounds=2"), data=data, progress=False)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["groups"]) == {"a", "b"} and r["unseen"] == {} for r in rows if "groups" in r)
    assert json.loads((path / "summary.json").read_text())["final"]["unseen"] == {}


def test_bad_values_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"train\.rounds must be >= 1"):
        load_reward_config(None, ["train.rounds=0"])
    with pytest.raises(ConfigError, match=r"train\.server"):
        load_reward_config(None, ["train.server=fedprox"])
    with pytest.raises(ConfigError, match="divisible"):
        load_reward_config(None, ["model.d_model=30", "model.heads=4"])


def test_the_cli_refuses_a_bad_key_with_one_line() -> None:
    result = firm_cli("reward", "train", "train.nope=1")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("firm: error: unknown key 'train.nope'")
    assert len(result.stderr.strip().splitlines()) == 1
