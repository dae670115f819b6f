"""Sweeps over seeds and arms: run directories per seed, data.seed fixed (paired evaluation), arms that ignore
the preference run once per seed, arms' overrides, resume, refusal before training, and the interval over seeds."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from firm.config import ConfigError, read_config
from firm.data import split_prompts
from firm.intervals import interval_record, mean_interval
from firm.report import comparison_table, load_sweep, write_comparison
from firm.report.seeds import Estimate, front_points
from firm.sweep import Arm, parse_seeds, sweep
from tests.conftest import firm_cli, tiny_config, tiny_overrides

T_975_2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (tables: 4.303)


# --------------------------------------------------------------------------- the interval


def test_mean_interval_by_hand() -> None:
    # [1, 2, 3]: mean 2, sample std 1, half-width t_{0.975, 2} * 1 / sqrt(3) = 4.3027 * 0.57735 = 2.4841
    mean, low, high, n = mean_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert high - mean == pytest.approx(T_975_2 / math.sqrt(3)) == pytest.approx(2.48414, abs=1e-5)
    assert mean - low == pytest.approx(T_975_2 / math.sqrt(3))
    # level 0.9: t_{0.95, 2} = 2.919986; [10, 12]: mean 11, std sqrt(2), half = t_{0.975, 1} * sqrt(2) / sqrt(2) = 12.7062
    assert mean_interval([1.0, 2.0, 3.0], level=0.9)[2] - 2.0 == pytest.approx(2.919986 / math.sqrt(3), abs=1e-6)
    assert mean_interval([10.0, 12.0])[2] == pytest.approx(11.0 + 12.706205, abs=1e-5)
    assert mean_interval([4.0, 4.0, 4.0])[1:] == (4.0, 4.0, 3)  # no spread: a zero-width interval
    one = mean_interval([0.25])
    assert one[0] == 0.25 and math.isnan(one[1]) and math.isnan(one[2]) and one[3] == 1  # one seed: no interval
    assert mean_interval([])[3] == 0 and math.isnan(mean_interval([])[0])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=1.0)
    assert interval_record([0.25]) == {"mean": 0.25, "low": None, "high": None, "n": 1, "level": 0.95}
    assert Estimate.of([1.0, 2.0, 3.0, None, math.nan]).text() == f"2.0000 ± {T_975_2 / math.sqrt(3):.4f}"  # n = 3
    assert Estimate.of([0.25]).text() == "0.2500" and Estimate.of([]).text() == "n/a"


# --------------------------------------------------------------------------- arms


def test_arm_syntax() -> None:
    arm = Arm.parse("fmgda-sgd:algorithm.name=fmgda,algorithm.optimizer=sgd,algorithm.lr=0.05")
    assert arm == Arm("fmgda-sgd", ("algorithm.name=fmgda", "algorithm.optimizer=sgd", "algorithm.lr=0.05"))
    assert Arm.parse('r4:lora.target_modules=["q_proj", "v_proj"],lora.r=4').overrides == (
        'lora.target_modules=["q_proj", "v_proj"]',
        "lora.r=4",
    )  # the comma inside the list stays in its value
    assert Arm.parse("fedavg") == Arm.of("fedavg") == Arm("fedavg", ("algorithm.name=fedavg",))
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("0,one")


@pytest.mark.parametrize(
    ("overrides", "uses"),
    [
        (["algorithm.name=firm"], True),
        (["algorithm.name=fedavg"], True),
        (["algorithm.name=mgda"], False),
        (["algorithm.name=fmgda"], False),
        (["algorithm.name=fmgda", "fmgda.steering=true"], True),
        (["algorithm.name=fmgda", "fmgda.steering=true", "algorithm.reg=0"], False),  # steering at reg 0 is min-norm
        (["algorithm.name=fedcmoo"], False),  # the min-norm solve starts from uniform weights
        (["algorithm.name=fedcmoo", "fedcmoo.steering=true"], True),
        (["algorithm.name=firm", "algorithm.anchor=uniform"], False),
        (["algorithm.name=centralized", "algorithm.reference_rule=mgda"], False),
        (["algorithm.name=local", "algorithm.reference_rule=fedavg"], True),
    ],
)
def test_each_algorithm_declares_whether_it_reads_the_preference(overrides: list[str], uses: bool) -> None:
    from firm.algorithms import uses_preference

    assert uses_preference(read_config(None, overrides)) is uses


def test_a_bad_arm_stops_the_sweep_before_any_training(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "output.name=bad")
    good = Arm.of("fedavg")
    for arm, message in [
        (Arm("x", ("algorithm.nope=1",)), r"arm 'x': unknown key 'algorithm\.nope'"),
        (Arm("x", ("algorithm.lr=-1",)), r"arm 'x': algorithm\.lr: must be > 0"),
        (Arm("x", ("algorithm.name=fmgda", "aggregation.clip_norm=1")), r"arm 'x': aggregation\.clip_norm: fmgda does not clip"),
        (Arm("x", ("federation.seed=3",)), r"federation\.seed is set by the sweep"),
        (Arm("x", ("eval.num_prompts=8",)), r"eval is set by the sweep or shared by all its arms"),
        (Arm("x", ("data={seed=3}",)), r"data\.seed is set by the sweep"),
        (Arm("x", ("algorithm.lr",)), r"expected key=value"),
        (Arm("no/slash", ()), r"arm label 'no/slash'"),
        (Arm.of("nope"), r"unknown algorithm 'nope'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            sweep(config, [good, arm], divisions=1)
    with pytest.raises(ConfigError, match="labels must differ"):
        sweep(config, [good, Arm("fedavg", ("algorithm.name=firm",))], divisions=1)
    with pytest.raises(ConfigError, match="--seeds"):
        sweep(config, [good], divisions=1, seeds=[0, 0])
    with pytest.raises(ConfigError, match="--seeds"):
        sweep(config, [good], divisions=1, seeds=[-1])
    assert not (tmp_path / "bad").exists()  # nothing ran, not even the good arm

    proc = firm_cli("sweep", "--arm", "slow:algorithm.lr=-1", "--divisions", "1", *tiny_overrides(tmp_path), "output.name=cli")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["firm: error: arm 'slow': algorithm.lr: must be > 0, got -1.0"]
    assert not (tmp_path / "cli").exists()


# --------------------------------------------------------------------------- a sweep over two seeds


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fedavg (2 preferences) and mgda (ignores p: one point) at seeds 0 and 1, 1 round: 6 tiny runs."""
    out = tmp_path_factory.mktemp("seeds")
    config = tiny_config(out, "federation.rounds=1", "algorithm.local_steps=1", "output.name=sw")
    return Path(sweep(config, ["fedavg", "mgda"], divisions=1, seeds=[0, 1])["path"])


def _config(run_dir: Path) -> dict:
    return tomllib.loads((run_dir / "config.toml").read_text())


def test_every_seed_has_its_own_run_directories_and_arms_that_ignore_p_run_once_per_seed(seeded: Path) -> None:
    saved = json.loads((seeded / "sweep.json").read_text())
    assert [(p["label"], p["seed"], p["run_dir"], p["uses_preference"]) for p in saved["points"]] == [
        ("fedavg", 0, "fedavg-p00-s0", True),
        ("fedavg", 0, "fedavg-p01-s0", True),
        ("mgda", 0, "mgda-s0", False),
        ("fedavg", 1, "fedavg-p00-s1", True),
        ("fedavg", 1, "fedavg-p01-s1", True),
        ("mgda", 1, "mgda-s1", False),
    ]
    assert [p["preference"] for p in saved["points"][:3]] == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]  # mgda: the config's p
    for p in saved["points"]:
        assert p["status"] == "completed" and set(p["final_eval"]) == set(p["final_eval_se"]) == {"positiveness", "conciseness"}
        assert p["algorithm"] == p["label"] and p["total_upload_bytes"] > 0 and p["wall_time_s"] > 0
        assert _config(seeded / p["run_dir"])["federation"]["seed"] == p["seed"]
    assert saved["seeds"] == [0, 1] and saved["key"]["seeds"] == [0, 1]
    assert [a["uses_preference"] for a in saved["arms"]] == [True, False]
    # the seed changes the training: the same arm and preference ends elsewhere at another seed
    finals = {p["run_dir"]: p["final_eval"] for p in saved["points"]}
    assert finals["fedavg-p00-s0"] != finals["fedavg-p00-s1"]

    pareto = saved["pareto"]  # per (arm, seed), then the mean and t interval over the two seeds
    assert set(pareto["by_seed"]) == {"0", "1"}
    for arm in ("fedavg", "mgda"):
        per_seed = [pareto["by_seed"][s]["hypervolume"][arm] for s in ("0", "1")]
        mean, low, high, n = mean_interval(per_seed)
        assert pareto["interval"][arm]["n"] == n == 2
        assert pareto["hypervolume"][arm] == pytest.approx(mean) and pareto["interval"][arm]["mean"] == pytest.approx(mean)
        assert pareto["interval"][arm]["low"] == pytest.approx(low) and pareto["interval"][arm]["high"] == pytest.approx(high)
    # mgda's front is one point per seed, not copies at every preference
    assert all(len(pareto["by_seed"][s]["front"]["mgda"]) == 1 for s in ("0", "1"))


def test_data_seed_is_fixed_across_seeds_so_every_run_sees_the_same_held_out_prompts(seeded: Path) -> None:
    saved = json.loads((seeded / "sweep.json").read_text())
    configs = {p["run_dir"]: _config(seeded / p["run_dir"]) for p in saved["points"]}
    assert {c["data"]["seed"] for c in configs.values()} == {0}  # data.seed = -1 resolved once, to the base seed 0
    assert {c["federation"]["seed"] for c in configs.values()} == {0, 1}
    held_out = {
        name: tuple(p.text for p in split_prompts(read_config(seeded / name / "config.toml", upgrade=True)).eval)
        for name in configs
    }
    assert len(set(held_out.values())) == 1 and len(next(iter(held_out.values()))) == 4
    # what the runs evaluated: the same prompts in samples.jsonl, one per-prompt mean per held-out prompt
    samples = {name: [json.loads(line)["prompt"] for line in (seeded / name / "samples.jsonl").open()] for name in configs}
    assert len({tuple(s) for s in samples.values()}) == 1
    assert all(samples[name] == list(held_out[name][: len(samples[name])]) for name in configs)
    for name in configs:
        summary = json.loads((seeded / name / "summary.json").read_text())
        assert len(summary["final_eval_prompt_means"]) == 4


def test_an_explicit_data_seed_is_kept(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "data.seed=7", "output.name=sw")
    result = sweep(config, ["mgda"], divisions=1, seeds=[2, 3])
    assert [p["run_dir"] for p in result["points"]] == ["mgda-s2", "mgda-s3"]
    assert {_config(tmp_path / "sw" / p["run_dir"])["data"]["seed"] for p in result["points"]} == {7}


def test_resume_with_seeds_skips_completed_points_and_refuses_other_seeds(seeded: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "sw"
    shutil.copytree(seeded, root)
    config = tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "output.name=sw")
    stamps = {d.name: (d / "summary.json").stat().st_mtime_ns for d in root.iterdir() if d.is_dir()}
    (root / "mgda-s1" / "summary.json").unlink()  # a point that never completed
    again = sweep(config, ["fedavg", "mgda"], divisions=1, seeds=[0, 1])
    after = {d.name: (d / "summary.json").stat().st_mtime_ns for d in root.iterdir() if d.is_dir()}
    assert {name for name in stamps if after[name] != stamps[name]} == {"mgda-s1"}  # only that one ran again
    before = json.loads((seeded / "sweep.json").read_text())["points"]
    assert [p["final_eval"] for p in again["points"]] == [p["final_eval"] for p in before]  # and reproduced its figures
    with pytest.raises(ConfigError, match="different config, arms or seeds"):
        sweep(config, ["fedavg", "mgda"], divisions=1, seeds=[0, 1, 2])
    with pytest.raises(ConfigError, match="different config, arms or seeds"):
        sweep(config, ["fedavg", Arm("mgda", ("algorithm.name=mgda", "algorithm.lr=0.01"))], divisions=1, seeds=[0, 1])


def test_a_sweep_of_an_older_firm_is_refused_but_still_compared(seeded: Path, tmp_path: Path) -> None:
    """An old sweep.json: key {config, algorithms, divisions}, points without label, seed or uses_preference."""
    import shutil

    root = tmp_path / "old"
    shutil.copytree(seeded, root, ignore=shutil.ignore_patterns("*-s1", "plots", "*.html"))
    saved = json.loads((root / "sweep.json").read_text())
    config = dict(saved["key"]["config"], federation={**saved["key"]["config"]["federation"], "seed": 0})
    old_points = []
    for p in saved["points"]:
        if p["seed"] == 0 and p["label"] == "fedavg":
            name = p["run_dir"].removesuffix("-s0")
            (root / p["run_dir"]).rename(root / name)
            old_points.append(
                {k: v for k, v in p.items() if k not in ("label", "seed", "uses_preference", "final_eval_se")} | {"run_dir": name}
            )
    old = {"key": {"config": config, "algorithms": ["fedavg"], "divisions": 1}, "points": old_points}
    (root / "sweep.json").write_text(json.dumps(old))
    shutil.rmtree(root / "mgda-s0")
    with pytest.raises(ConfigError, match="older firm"):
        sweep(tiny_config(tmp_path, "federation.rounds=1", "algorithm.local_steps=1", "output.name=old"), ["fedavg"], 1)
    sw = load_sweep(root)
    assert sw.arms == ["fedavg"] and sw.seeds == [0] and sw.missing == []
    table = comparison_table(root)
    row = table.splitlines()[2]
    assert row.startswith("fedavg ") and "±" not in row and row.split()[-2:] == ["1", "2/2"]  # one seed: the values alone
    write_comparison(root)


def test_the_comparison_shows_means_and_intervals_over_seeds(seeded: Path) -> None:
    saved = json.loads((seeded / "sweep.json").read_text())
    table = comparison_table(seeded)
    lines = table.splitlines()
    header = lines[0].split()
    assert header[:2] == ["arm", "preference"] and "seeds" in header
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"fedavg", "mgda"}
    assert rows["mgda"].split()[1] == "any"  # one point per seed, whatever the preference
    hv = saved["pareto"]["interval"]["fedavg"]
    assert f"{hv['mean']:.4f} ± {(hv['high'] - hv['low']) / 2:.4f}" in rows["fedavg"]
    # the mean reward at fedavg's point closest to uniform (a tie here: the first grid point) over the two seeds
    values = [p["final_eval"]["positiveness"] for p in saved["points"] if p["run_dir"].startswith("fedavg-p00")]
    mean, low, high, _ = mean_interval(values)
    assert f"{mean:.4f} ± {(high - low) / 2:.4f}" in rows["fedavg"]
    assert "95 % Student-t" in table

    sw = load_sweep(seeded)
    (mgda,) = front_points(sw, "mgda")  # one point, over the 2 seeds
    assert mgda.preference is None and len(mgda.points) == 2 and all(e.n == 2 for e in mgda.rewards)
    fedavg = front_points(sw, "fedavg")
    assert [fp.preference for fp in fedavg] == [(1.0, 0.0), (0.0, 1.0)] and all(len(fp.points) == 2 for fp in fedavg)
    html = write_comparison(seeded).read_text()
    assert "95 % Student-t" in html and "seed 1" in html and "mgda-s1" in html
    assert (seeded / "plots" / "front.png").stat().st_size > 5_000


def test_cli_arms_references_and_seeds(tmp_path: Path) -> None:
    """`firm compare` with --arm (overrides applied, a reference as an arm) and --seeds; --algorithms beside them."""
    proc = firm_cli(
        "compare",
        "--algorithms", "mgda",
        "--arm", "fedavg-sgd:algorithm.name=fedavg,algorithm.optimizer=sgd,algorithm.lr=0.05",
        "--arm", "central-mgda:algorithm.name=centralized,algorithm.reference_rule=mgda",
        "--seeds", "0,1",
        "--divisions", "1",
        *tiny_overrides(tmp_path), "federation.rounds=1", "algorithm.local_steps=1", "output.name=cmp",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "cmp"
    saved = json.loads((root / "sweep.json").read_text())
    assert {p["run_dir"] for p in saved["points"]} == {
        "mgda-s0", "mgda-s1", "central-mgda-s0", "central-mgda-s1",
        "fedavg-sgd-p00-s0", "fedavg-sgd-p01-s0", "fedavg-sgd-p00-s1", "fedavg-sgd-p01-s1",
    }  # fmt: skip
    sgd = _config(root / "fedavg-sgd-p00-s1")["algorithm"]
    assert (sgd["name"], sgd["optimizer"], sgd["lr"]) == ("fedavg", "sgd", 0.05)
    assert _config(root / "mgda-s0")["algorithm"]["optimizer"] == "adam"  # other arms keep the config's
    central = json.loads((root / "central-mgda-s0" / "summary.json").read_text())
    assert central["reference"] == "centralized" and central["status"] == "completed"
    assert "comparison:" in proc.stdout and "central-mgda" in proc.stdout and "±" in proc.stdout
    assert (root / "comparison.html").is_file()
    refused = firm_cli("compare", "--seeds", "0,1", str(root))
    assert refused.returncode == 2 and "either SWEEP_DIR" in refused.stderr


def test_shards_split_the_points_and_the_unsharded_call_assembles_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shards run disjoint halves; the unsharded call then runs nothing and writes every point."""
    import firm.launch

    config = tiny_config(tmp_path, "federation.rounds=1", "output.name=sharded")
    ran: list[str] = []
    original = firm.launch.run

    def counting(point, **kwargs):  # type: ignore[no-untyped-def]
        ran.append(point.output.name)
        return original(point, **kwargs)

    monkeypatch.setattr(firm.launch, "run", counting)
    first = sweep(config, ["fedavg", "mgda"], 1, [0], shard=(0, 2))
    assert "pareto" not in first
    assert json.loads((tmp_path / "sharded" / "sweep.json").read_text())["points"] == []  # the plan only
    sweep(config, ["fedavg", "mgda"], 1, [0], shard=(1, 2))
    assert sorted(ran) == ["fedavg-p00", "fedavg-p01", "mgda"]  # disjoint shares, every point once
    whole = sweep(config, ["fedavg", "mgda"], 1, [0])
    assert len(ran) == 3  # the unsharded call found every point done
    assert sorted(p["run_dir"] for p in whole["points"]) == ["fedavg-p00", "fedavg-p01", "mgda"]
    assert whole["pareto"] is not None
    with pytest.raises(ValueError, match="shard"):
        sweep(config, ["fedavg", "mgda"], 1, [0], shard=(2, 2))


def test_the_resume_key_holds_only_what_differs_from_the_defaults() -> None:
    """A field a later firm adds with a default leaves a sweep's key (and so its resume) unchanged."""
    from firm.config import Config
    from firm.sweep import config_delta

    assert config_delta(Config()) == {}
    assert config_delta(read_config(None, ["federation.rounds=3", "data.sources=['builtin']"])) == {
        "federation": {"rounds": 3},
        "data": {"sources": ["builtin"]},
    }
    assert config_delta(read_config(None, ["federation.rounds=6"])) == {}  # 6 is the default
