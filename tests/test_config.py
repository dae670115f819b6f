"""Config: loading, overrides, round trip, and one clear error per kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firm.config import Config, ConfigError, config_from_dict, config_to_dict, config_to_toml, load_config


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


@pytest.mark.parametrize(("overrides", "message"), [BAD_INPUT[0], BAD_INPUT[2], BAD_INPUT[8], BAD_INPUT[11]])
def test_cli_config_errors_exit_nonzero_without_traceback(overrides: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firm", "config", *overrides], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("firm: error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
