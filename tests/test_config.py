"""Config: loading, overrides, round trip, and one clear error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from firm.config import Config, ConfigError, config_from_dict, config_to_dict, config_to_toml
from firm.validation import load_config
from tests.conftest import firm_cli


def test_defaults_are_valid() -> None:
    config = load_config()
    assert config == Config()
    assert config.objectives.preference_vector == (0.5, 0.5)


def test_toml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[federation]\nrounds = 7\nseed = 3\n[algorithm]\nname = "mgda"\n')
    config = load_config(path, ["federation.rounds=3", "algorithm.reg=0.5", "objectives.preference=[1, 3]"])
    assert config.federation.rounds == 3  # the override wins over the file
    assert config.federation.seed == 3
    assert config.algorithm.name == "mgda"
    assert config.algorithm.reg == 0.5
    assert config.objectives.preference_vector == (0.25, 0.75)


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("federation:\n  num_clients: 6\nobjectives:\n  names: [positiveness, diversity]\n")
    config = load_config(path)
    assert config.federation.num_clients == 6
    assert config.objectives.names == ("positiveness", "diversity")


def test_round_trip_through_toml(tmp_path: Path) -> None:
    config = load_config(None, ["algorithm.name=fedavg", "objectives.preference=[0.2, 0.8]", "lora.r=4"])
    assert config_from_dict(config_to_dict(config)) == config
    path = tmp_path / "resolved.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config


def test_int_accepted_for_float_and_bare_strings() -> None:
    config = load_config(None, ["algorithm.lr=1", "model.name=HuggingFaceTB/SmolLM2-135M-Instruct"])
    assert config.algorithm.lr == 1.0 and isinstance(config.algorithm.lr, float)
    assert config.model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


BAD_INPUT = [
    (["federation.roundz=3"], "unknown key 'federation.roundz'; allowed under federation: num_clients"),
    (["foo.bar=1"], "unknown key 'foo'"),
    (["federation.rounds=abc"], "federation.rounds: expected an integer, got 'abc'"),
    (["federation.rounds=2.5"], "federation.rounds: expected an integer"),
    (["output.progress=3"], "output.progress: expected true or false"),
    (["algorithm.optimizer=lion"], "algorithm.optimizer: got 'lion', allowed: one of 'adam', 'sgd'"),
    (["objectives.preference=[1, 2, 3]"], "objectives.preference: has 3 values but objectives.names has 2"),
    (["objectives.preference=[-1, 2]"], "objectives.preference: weights must be >= 0"),
    (["objectives.preference=[0, 0]"], "objectives.preference: weights must not all be zero"),
    (['objectives.names=["positiveness", "humour"]'], "objectives.names[1]: unknown objective 'humour'; allowed:"),
    (
        ["algorithm.name=ppo"],
        "algorithm.name: unknown algorithm 'ppo'; allowed: centralized, fedavg, fedcmoo, firm, fmgda, local, mgda",
    ),
    (["federation.clients_per_round=5"], "federation.clients_per_round: 5 is more than federation.num_clients = 4"),
    (["algorithm.reg=-1"], "algorithm.reg: must be >= 0"),
    (["algorithm.reg=inf"], "algorithm.reg: expected a finite number, got inf"),
    (["rollout.samples_per_prompt=1"], "rollout.samples_per_prompt: must be >= 2"),
    (["federation"], "expected key=value"),
    (["federation.rounds.x=1"], "federation.rounds: expected an integer, got {'x': 1}"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT)
def test_bad_input_message(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[federation]\nrounds = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 2"):
        load_config(broken)
    ini = tmp_path / "x.ini"
    ini.write_text("")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(ini)
    section = tmp_path / "y.toml"
    section.write_text("federation = 3\n")
    with pytest.raises(ConfigError, match="federation: expected a table of keys"):
        load_config(section)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("algorithm.normalize_deltas", "fmgda.normalize_deltas", "true"),
        ("algorithm.fmgda_steering", "fmgda.steering", "true"),
        ("algorithm.compression", "fedcmoo.compression", "0.25"),
        ("algorithm.fedcmoo_steering", "fedcmoo.steering", "true"),
    ],
)
def test_one_algorithms_settings_live_in_its_own_section(old: str, new: str, value: str) -> None:
    """FMGDA's and FedCMOO's flags moved from [algorithm] to [fmgda] / [fedcmoo]; the old key names the new one."""
    section, key = new.split(".")
    assert str(getattr(getattr(load_config(None, [f"{new}={value}"]), section), key)).lower() == value
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{old}={value}"])
    assert str(info.value) == f"{old} was renamed {new}"


def test_the_renamed_sampler_key_says_its_new_name(tmp_path: Path) -> None:
    assert load_config(None, ["rollout.sampler=plain"]).rollout.sampler == "plain"
    old = tmp_path / "old.toml"
    old.write_text('[rollout]\nengine = "plain"\n')  # a config (or a run's config.toml) from before the rename
    for load in (lambda: load_config(None, ["rollout.engine=plain"]), lambda: load_config(old)):
        with pytest.raises(ConfigError) as info:
            load()
        assert str(info.value) == "rollout.engine was renamed rollout.sampler"
    assert load_config(None, ["engine.name=flower"]).engine.name == "flower"  # the federation engine keeps its name


@pytest.mark.parametrize(("overrides", "message"), [BAD_INPUT[0], BAD_INPUT[2], BAD_INPUT[8], BAD_INPUT[11]])
def test_cli_config_errors_exit_nonzero_without_traceback(overrides: list[str], message: str) -> None:
    proc = firm_cli("config", *overrides)
    assert proc.returncode == 2
    assert proc.stderr.startswith("firm: error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- settings that would do nothing

DO_NOTHING = [
    (["algorithm.name=fmgda", "aggregation.clip_norm=1"], "aggregation.clip_norm: fmgda does not clip"),
    (["algorithm.name=fedcmoo", "aggregation.clip_norm=1"], "aggregation.clip_norm: fedcmoo does not clip"),
    (["aggregation.rule=median"], "aggregation.rule: 'median' needs 3 or more updates per round"),
    (
        ["aggregation.rule=trimmed_mean", "federation.clients_per_round=4"],
        "aggregation.trim: 0.2 of federation.clients_per_round = 4 updates trims 0 at each end",
    ),
    (["aggregation.rule=trimmed_mean", "aggregation.trim=0", "federation.clients_per_round=4"], "aggregation.trim: 0 of"),
    (
        ["algorithm.name=centralized", "aggregation.rule=median", "federation.clients_per_round=4"],
        "aggregation.rule: 'median' does nothing for the reference 'centralized'",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), DO_NOTHING)
def test_settings_that_would_silently_do_nothing_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_robust_rules_are_accepted_where_they_act() -> None:
    four = ["federation.clients_per_round=4"]
    assert load_config(None, ["aggregation.rule=median", "federation.clients_per_round=3"]).aggregation.rule == "median"
    assert load_config(None, ["aggregation.rule=trimmed_mean", "aggregation.trim=0.25", *four]).aggregation.trim == 0.25
    five = ["federation.num_clients=5", "federation.clients_per_round=5"]
    assert load_config(None, ["aggregation.rule=trimmed_mean", *five]).aggregation.trim == 0.2  # int(0.2 x 5) = 1 per end
    assert load_config(None, ["algorithm.name=fedavg", "aggregation.clip_norm=1"]).aggregation.clip_norm == 1.0


@pytest.fixture
def warnings_seen(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A fresh record of the warnings printed so far, so each test sees its own first printing."""
    import firm.validation

    seen: set[str] = set()
    monkeypatch.setattr(firm.validation, "_WARNED", seen, raising=False)
    return seen


WARNED = [
    (["aggregation.max_norm_ratio=5"], "aggregation.max_norm_ratio: the norm screen needs 3 or more updates in a round"),
    (
        ["federation.clients_per_round=4", "federation.min_clients=2"],
        "aggregation.max_norm_ratio: a round left with fewer than 3 updates (federation.min_clients = 2) is not screened",
    ),
    (
        ["federation.clients_per_round=4", "federation.min_clients=2", "aggregation.rule=median"],
        "aggregation.rule: a round left with fewer than 3 updates (federation.min_clients = 2) takes their plain median",
    ),
    (
        ["federation.clients_per_round=4", "federation.min_clients=3", "aggregation.rule=trimmed_mean", "aggregation.trim=0.25"],
        "aggregation.trim: a round left with fewer than 4 updates (federation.min_clients = 3) trims none of them",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), WARNED)
def test_settings_that_act_in_only_some_rounds_warn_once(
    overrides: list[str], message: str, warnings_seen: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    load_config(None, overrides)
    load_config(None, overrides)  # validated again (a sweep, the Flower ServerApp): not printed again
    lines = capsys.readouterr().err.splitlines()
    matching = [line for line in lines if message in line]
    assert len(matching) == 1 and matching[0].startswith(f"firm: warning: {message}"), lines
    assert all(line.startswith("firm: warning: ") for line in lines)
    assert len(lines) == len(set(lines))


def test_the_default_config_prints_no_warning(warnings_seen: set[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The default norm screen at the default 2 clients per round is documented, not warned about (`make demo` stays clean)."""
    load_config()
    assert capsys.readouterr().err == ""


def test_help_says_robust_rules_weigh_every_update_equally() -> None:
    from firm.config import field_help

    help_text = {key: doc for key, _, _, doc in field_help()}
    assert "sample counts are not used" in help_text["aggregation.rule"]
    assert "3 or more" in help_text["aggregation.rule"]
    assert "fmgda and fedcmoo do not clip" in help_text["aggregation.clip_norm"]
    assert "fewer updates" in help_text["federation.min_clients"]
