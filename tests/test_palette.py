"""The palette end to end on the tiny model: `firm palette`, `firm train palette.targets=...`, best-of-n.

The math of the dual (hand-derived cases, LP agreement, federated = pooled) is in test_palette_math.py;
here: real reward samples from the tiny model's reference, the client/server split of the statistics
on them, the preference a run trains with, what the run directory and the report show, and the
errors a user sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firm.cli import main
from firm.config import ConfigError
from firm.data import federated_prompts
from firm.objectives import resolve_objective
from firm.palette import Federation, PaletteInfeasible, Samples, TiltStats, parse_targets, solve_palette
from firm.palette.sampling import client_reward_samples, select, solve_federated
from firm.policy import build_policy
from firm.report import load_run, palette_rows, report_table
from firm.train import run
from tests.conftest import tiny_config, tiny_overrides

NAMES = ["positiveness", "conciseness"]


def _cli_args(tmp_path: Path) -> list[str]:
    return [*tiny_overrides(tmp_path), "palette.prompts_per_client=6"]


@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Samples], object]:
    """Each client's reference reward samples on the tiny model (6 prompts x 4 samples per client)."""
    config = tiny_config(tmp_path_factory.mktemp("pal"), "palette.prompts_per_client=6")
    fed = config.federation
    prompts = federated_prompts(config.data, fed.num_clients, config.eval.num_prompts, fed.seed)
    policy = build_policy(config.model, config.lora, fed.seed)
    objectives = [(n, resolve_objective(n)) for n in NAMES]
    return client_reward_samples(policy, objectives, prompts.clients, config), config


def test_client_samples_are_real_and_seeded(tiny_samples: tuple[list[Samples], object]) -> None:
    clients, config = tiny_samples
    assert len(clients) == 2
    for client in clients:
        assert client.rewards.shape == (6 * 4, 2)
        assert np.isfinite(client.rewards).all()
        assert client.rewards[:, 0].std() > 0  # sampled completions differ in positiveness
    # the same seed gives the same samples: the palette a run trains with is reproducible
    fed = config.federation  # type: ignore[attr-defined]
    prompts = federated_prompts(config.data, fed.num_clients, config.eval.num_prompts, fed.seed)  # type: ignore[attr-defined]
    policy = build_policy(config.model, config.lora, fed.seed)  # type: ignore[attr-defined]
    again = client_reward_samples(policy, [(n, resolve_objective(n)) for n in NAMES], prompts.clients, config)  # type: ignore[arg-type]
    for a, b in zip(clients, again, strict=True):
        np.testing.assert_array_equal(a.rewards, b.rewards)


def test_federated_solve_on_model_samples_equals_pooled(tiny_samples: tuple[list[Samples], object]) -> None:
    clients, _ = tiny_samples
    pooled = Samples(np.concatenate([c.rewards for c in clients]))
    for spec in ("positiveness=+0.02,conciseness=q0.6", "positiveness=q0.7", "conciseness=+0.01"):
        targets = parse_targets(spec, NAMES)
        federation = Federation(clients)
        fed = solve_palette(federation, targets, NAMES)
        ref = solve_palette(pooled, targets, NAMES)
        assert fed.feasible and ref.feasible
        np.testing.assert_allclose(fed.targets, ref.targets, atol=1e-9)
        np.testing.assert_allclose(fed.lam, ref.lam, atol=1e-6)
        np.testing.assert_allclose(fed.predicted, ref.predicted, atol=1e-6)
        assert fed.kl == pytest.approx(ref.kl, abs=1e-6)
        # per round a client sends 3 + M + M^2 floats of statistics, or one count: never its samples
        per_client = federation.stats_rounds * 8 * (3 + 2 + 4) + federation.count_rounds * 8
        assert federation.upload_bytes == len(clients) * per_client
        assert federation.stats_rounds == fed.queries


class _StatsOnly:
    """A client that can only answer statistics: the server never gets at the rewards."""

    def __init__(self, samples: Samples) -> None:
        self._answer_stats, self._answer_count = samples.stats, samples.count_at_most

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        out = self._answer_stats(lam, center)
        assert out.sum_r.shape == (2,) and out.sum_rr.shape == (2, 2)  # fixed-size message, whatever n is
        return out

    def count_at_most(self, value: int, threshold: float) -> float:
        return self._answer_count(value, threshold)


def test_solve_needs_only_statistics(tiny_samples: tuple[list[Samples], object]) -> None:
    clients, _ = tiny_samples
    targets = parse_targets("positiveness=q0.75,conciseness=+0.005", NAMES)
    opaque = solve_palette(Federation([_StatsOnly(c) for c in clients]), targets, NAMES)
    plain = solve_palette(Federation(clients), targets, NAMES)
    np.testing.assert_allclose(opaque.lam, plain.lam, atol=1e-12)


def test_select_best_of_n_and_tilted() -> None:
    # two prompts x three samples; lambda = (1, 0): best = argmax of the first value per prompt
    rewards = np.array([[0.1, 0.9], [0.5, 0.0], [0.3, 0.3], [0.2, 0.2], [0.2, 0.1], [0.9, 0.0]])
    best, tilted = select(rewards, np.array([1.0, 0.0]), 3, np.random.default_rng(0))
    assert best.tolist() == [1, 5]
    assert all(0 <= t - 3 * i < 3 for i, t in enumerate(tilted))
    # a huge lambda makes tilted resampling pick the best sample
    _, tilted = select(rewards, np.array([1e4, 0.0]), 3, np.random.default_rng(0))
    assert tilted.tolist() == [1, 5]
    # lambda = 0: tilted resampling is uniform over each prompt's samples
    counts = np.zeros(3)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        _, t = select(rewards[:3], np.zeros(2), 3, rng)
        counts[t[0]] += 1
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)


def test_firm_palette_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pal"
    status = main(
        [
            "palette",
            "--targets",
            "positiveness=+0.02,conciseness=q0.5",
            "--best-of-n",
            "3",
            "--out",
            str(out),
            *_cli_args(tmp_path),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "feasible: yes" in text and "lambda" in text and "best-of-n" in text
    record = json.loads((out / "palette.json").read_text())
    assert record["feasible"] is True
    lam = np.array([record["lambda"][n] for n in NAMES])
    assert (lam >= 0).all() and lam.sum() > 0
    for name in NAMES:  # the tilted reference meets every target (KKT)
        assert record["predicted"][name] >= record["targets"][name] - 1e-6 * max(record["reference_std"][name], 1e-12)
    assert record["decoding"]["n"] == 3 and record["decoding"]["num_prompts"] == 4
    assert set(record["decoding"]["best_of_n"]) == set(NAMES)
    region = record["region"]
    assert len(region["x"]) == len(region["kl"][0]) and region["frontier"]
    assert (out / "palette.png").stat().st_size > 0 and (out / "palette_region.png").stat().st_size > 0


def test_firm_palette_cli_reports_infeasible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # positiveness is a probability: 1.5 is out of reach of any reweighting
    status = main(["palette", "--targets", "positiveness=1.5", "--out", str(tmp_path / "pal"), *_cli_args(tmp_path)])
    text = capsys.readouterr().out
    assert status == 1
    assert "feasible: NO: infeasible: every reference sample has positiveness <=" in text
    assert json.loads((tmp_path / "pal" / "palette.json").read_text())["feasible"] is False


def test_train_with_palette_sets_preference_and_reports(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, "palette.targets=positiveness=+0.02,conciseness=q0.5", "palette.prompts_per_client=6", "output.report=true"
    )
    result = run(config)
    pal = json.loads((result.run_dir / "palette.json").read_text())
    lam = np.array([pal["lambda"][n] for n in NAMES])
    assert pal["feasible"] and lam.sum() > 0
    # the preference every algorithm trains with is lambda / sum(lambda), recorded in summary and config.toml
    np.testing.assert_allclose(result.summary["preference"], lam / lam.sum())
    assert result.summary["palette"]["lambda"] == pal["lambda"]
    assert "region" not in result.summary["palette"] and pal["region"]["frontier"]
    toml = (result.run_dir / "config.toml").read_text()
    assert "targets = " in toml and "preference = " in toml
    # FedAvg steps with lambda = p on every step: the logged weights are the palette's preference
    # (the palette solve is the same on the same seed, whichever algorithm trains)
    fedavg = run(
        tiny_config(
            tmp_path,
            "algorithm=fedavg",
            "palette.targets=positiveness=+0.02,conciseness=q0.5",
            "palette.prompts_per_client=6",
            "output.name=fa",
        )
    )
    for row in fedavg.metrics:
        for weights in row["weights"].values():
            np.testing.assert_allclose(weights, lam / lam.sum(), atol=1e-6)
    # the report: per evaluated round, achieved - target per constrained value
    loaded = load_run(result.run_dir)
    rows = palette_rows(loaded)
    assert [r for r, _ in rows] == [0, 1, 2]
    final = result.summary["final_eval"]
    for name in NAMES:
        assert rows[-1][1][name] == pytest.approx(final[name] - pal["targets"][name])
    assert "palette targets vs achieved" in report_table(result.run_dir)
    html = (result.run_dir / "report.html").read_text()
    assert "Palette: targets vs achieved" in html and "plots/palette_region.png" in html
    assert (result.run_dir / "plots" / "palette.png").is_file()


def test_train_with_infeasible_palette_stops_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "palette.targets=positiveness=1.5,conciseness=0.5", "output.name=bad", *_cli_args(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "infeasible" in err and "nothing was trained" in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(PaletteInfeasible, match="positiveness"):
        run(tiny_config(tmp_path, "palette.targets=positiveness=1.5", "palette.prompts_per_client=2"))


def test_palette_met_by_reference_keeps_preference(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "palette.targets=positiveness=-0.05,conciseness=-0.05",
        "palette.prompts_per_client=2",
        "objectives.preference=[0.3, 0.7]",
        "federation.rounds=1",
    )
    result = run(config)
    assert result.summary["palette"]["met_by_reference"] is True
    assert result.summary["palette"]["lambda"] == {"positiveness": 0.0, "conciseness": 0.0}
    np.testing.assert_allclose(result.summary["preference"], [0.3, 0.7])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("palette.targets=helpfulness=0.9", "'helpfulness' is not an objective of this run"),
        ("palette.targets=positiveness=q1.5", "strictly between 0 and 1"),
        ("palette.targets=positiveness", "expected name=value"),
        ("palette.samples_per_prompt=0", "palette.samples_per_prompt: must be >= 1"),
    ],
)
def test_palette_config_errors(tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        tiny_config(tmp_path, override)


def test_solve_federated_reports_cost(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "palette.targets=positiveness=+0.01", "palette.prompts_per_client=2")
    fed = config.federation
    prompts = federated_prompts(config.data, fed.num_clients, config.eval.num_prompts, fed.seed)
    policy = build_policy(config.model, config.lora, fed.seed)
    solution, federation = solve_federated(policy, [(n, resolve_objective(n)) for n in NAMES], prompts.clients, config)
    assert solution.extra["clients"] == 2 and solution.num_samples == 2 * 2 * 4
    # no quantile target: every round is one of the solve's statistics calls
    assert solution.extra["stat_rounds"] == federation.rounds == federation.stats_rounds == solution.queries


def test_region_frontier_agrees_with_the_target_sweep() -> None:
    """Just inside the traced frontier the solver says feasible, just outside infeasible; cells match the LP."""
    from firm.palette import Target, feasible_by_lp
    from firm.palette.plots import feasible_region

    rng = np.random.default_rng(3)
    x = rng.uniform(size=300)
    rewards = np.stack([x, 1 - x**2 + 0.1 * rng.normal(size=300)], axis=1)  # a concave trade-off
    federation = Federation([Samples(part) for part in np.array_split(rewards, 3)])
    region = feasible_region(federation, ["a", "b"], grid=9, directions=21)
    pooled = Samples(rewards)
    for fx, fy in region["frontier"]:
        inside = [Target("a", "absolute", fx - 1e-3), Target("b", "absolute", fy - 1e-3)]
        outside = [Target("a", "absolute", fx + 1e-3), Target("b", "absolute", fy + 1e-3)]
        assert solve_palette(pooled, inside, ["a", "b"]).feasible
        assert not solve_palette(pooled, outside, ["a", "b"]).feasible
    for j, y in enumerate(region["y"]):
        for i, xv in enumerate(region["x"]):
            lp = feasible_by_lp(rewards, np.array([xv, y]))
            margin_a = abs(xv - max(rewards[:, 0])) > 1e-9
            if margin_a:  # cells on the last column sit exactly on the largest sample: the edge case
                assert (region["kl"][j][i] is not None) == lp, (xv, y)


@pytest.mark.slow
def test_smollm2_obviously_infeasible_palette_is_reported_before_training(tmp_path: Path) -> None:
    """The real default model and scorers: helpfulness and harmlessness both at 0.99 cannot be reached."""
    status = main(
        [
            "train",
            "palette.targets=helpfulness=0.99,harmlessness=0.99",
            "palette.prompts_per_client=2",
            "palette.samples_per_prompt=4",
            f"output.dir={tmp_path.as_posix()}",
            "output.name=infeasible",
            "output.progress=false",
        ]
    )
    assert status == 2
    assert not (tmp_path / "infeasible").exists()  # nothing was trained or written


def test_targets_just_inside_the_edge_are_feasible() -> None:
    """Dense samples: targets 1e-3 .. 1e-6 std below the largest sample are met (the LP agrees); just above, not."""
    from firm.palette import Target, feasible_by_lp

    rewards = np.linspace(0.0, 1.0, 1000)[:, None]
    std = float(rewards.std())
    for eps in (1e-3, 1e-4, 1e-5, 1e-6):
        target = 1.0 - eps * std
        sol = solve_palette(Samples(rewards), [Target("a", "absolute", target)], ["a"])
        assert sol.feasible == feasible_by_lp(rewards, np.array([target])) is True, (eps, sol.reason)
        assert sol.projected_gradient <= 1e-6  # optimal, not just feasible
    sol = solve_palette(Samples(rewards), [Target("a", "absolute", 1.0 + 1e-4 * std)], ["a"])
    assert not sol.feasible and "every reference sample has a <= 1," in sol.reason


def test_resume_reuses_the_palette(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted palette run resumes with its palette.json and preference; nothing is sampled again."""
    from firm.engines.inprocess import InProcessEngine
    from firm.validation import load_config

    def interrupt_round_2(round_idx: int, client_id: int, call: object) -> object:
        if round_idx == 2:
            raise KeyboardInterrupt
        return call()  # type: ignore[operator]

    def factory(policy, algorithm, objectives, prompts, config, communicate):  # type: ignore[no-untyped-def]
        return InProcessEngine(
            policy, algorithm, objectives, prompts.clients, config, communicate, client_wrapper=interrupt_round_2
        )

    config = tiny_config(tmp_path, "palette.targets=positiveness=+0.02", "palette.prompts_per_client=2", "output.name=r")
    with pytest.raises(KeyboardInterrupt):
        run(config, engine=factory)
    run_dir = tmp_path / "r"
    before = (run_dir / "palette.json").read_text()

    def no_sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("the palette was solved again on resume")

    monkeypatch.setattr("firm.palette.sampling.solve_federated", no_sampling)
    resumed = run(load_config(run_dir / "config.toml"), resume_from=run_dir)
    assert resumed.summary["status"] == "completed" and resumed.summary["resumed_from_round"] == 1
    assert (run_dir / "palette.json").read_text() == before
    pal = json.loads(before)
    np.testing.assert_allclose(resumed.summary["preference"], [pal["preference"][n] for n in NAMES])


def test_three_values_one_unconstrained_standardized_weights(tmp_path: Path) -> None:
    """M = 3, diversity unconstrained: its lambda and preference are 0, FedAvg trains with exactly that vector;
    palette.weights=standardized turns lambda_m into lambda_m * std_m before normalising; no region for M = 3."""
    config = tiny_config(
        tmp_path,
        'objectives.names=["positiveness", "conciseness", "diversity"]',
        "palette.targets=positiveness=q0.7,conciseness=q0.8",  # both bind on these samples
        "palette.prompts_per_client=4",
        "palette.weights=standardized",
        "algorithm=fedavg",
        "federation.rounds=1",
    )
    result = run(config)
    pal = json.loads((result.run_dir / "palette.json").read_text())
    names = ["positiveness", "conciseness", "diversity"]
    assert pal["targets"]["diversity"] is None and pal["lambda"]["diversity"] == 0.0
    lam = np.array([pal["lambda"][n] for n in names])
    std = np.array([pal["reference_std"][n] for n in names])
    expected = lam * std / (lam * std).sum()
    np.testing.assert_allclose(result.summary["preference"], expected, atol=1e-12)
    assert not np.allclose(expected, lam / lam.sum())  # the two rules differ here
    for weights in result.metrics[0]["weights"].values():
        np.testing.assert_allclose(weights, expected, atol=1e-6)
    assert "region" not in pal
