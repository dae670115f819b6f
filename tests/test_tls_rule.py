"""The TLS rule: plaintext Flower traffic only on loopback, unless the user opts out explicitly.

`firm train engine=flower` refuses a non-loopback `engine.superlink` without
`engine.root_certificates`, and `firm flower up` refuses a non-loopback `--superlink` without
`--tls`; each with one error line and exit status 2. Nothing here starts a Flower process or
resolves a name: the refusals happen before, and the passing cases stop at a stub.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from firm import cli
from firm.config import Config, ConfigError, EngineConfig
from firm.engines.flower import local

REMOTE = ["0.0.0.0:8000", "10.1.2.3:8000", "superlink.example.org:8000", "[::]:8000"]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("127.3.2.1:8000", True),
        ("localhost:8000", True),
        ("LOCALHOST:8000", True),
        ("[::1]:8000", True),
        ("::1:8000", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        ("10.1.2.3:8000", False),
        ("192.168.0.7:8000", False),
        ("superlink.example.org:8000", False),
        ("localhost.example.org:8000", False),  # a name is never resolved: only `localhost` itself counts
        ("127.0.0.1.nip.io:8000", False),
        ("[::ffff:10.0.0.1]:8000", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    from firm.transport import is_loopback_address

    assert is_loopback_address(address) is loopback


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stands in for the Flower submission: records the config instead of running `flwr run`."""
    calls: list[Config] = []

    def fake(config: Config) -> int:
        calls.append(config)
        return 0

    monkeypatch.setattr(cli, "_train_flower", fake)
    return calls


@pytest.mark.parametrize("address", REMOTE)
def test_train_refuses_plaintext_off_loopback(address: str, submitted: list[Config], capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["train", "engine=flower", f"engine.superlink={address}"])
    err = capsys.readouterr().err
    assert status == 2
    assert not submitted
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("firm: error: engine.superlink: ")
    assert "engine.root_certificates" in err and "engine.insecure_non_loopback=true" in err


@pytest.mark.parametrize("address", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"])
def test_train_allows_plaintext_on_loopback(address: str, submitted: list[Config]) -> None:
    assert cli.main(["train", "engine=flower", f"engine.superlink={address}"]) == 0
    assert submitted[0].engine.superlink == address


def test_train_allows_tls_or_the_explicit_opt_out_off_loopback(tmp_path: Path, submitted: list[Config]) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert cli.main(["train", "engine=flower", "engine.superlink=10.1.2.3:8000", f"engine.root_certificates={ca}"]) == 0
    assert cli.main(["train", "engine=flower", "engine.superlink=0.0.0.0:8000", "engine.insecure_non_loopback=true"]) == 0
    assert [c.engine.superlink for c in submitted] == ["10.1.2.3:8000", "0.0.0.0:8000"]


def test_the_in_process_engine_ignores_the_superlink() -> None:
    from firm.validation import load_config

    assert load_config(None, ["engine.superlink=10.1.2.3:8000"]).engine.superlink == "10.1.2.3:8000"


def test_submit_refuses_an_unvalidated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Config built in code skips `validate`; `submit` checks the rule itself before `flwr run`."""
    from firm.engines.flower import submit

    def no_flwr(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise AssertionError("flwr run must not start")

    monkeypatch.setattr(submit.subprocess, "run", no_flwr)
    with pytest.raises(ConfigError, match=r"engine\.superlink: 10\.1\.2\.3:8000 is not a loopback address"):
        submit.submit(Config(engine=EngineConfig(name="flower", superlink="10.1.2.3:8000")))


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Stands in for process start-up in `firm flower up`: records each command, starts nothing."""
    commands: list[list[str]] = []

    def fake_start(cluster: local.Cluster, role: str, cmd: list[str], home: Path) -> local.Process:
        commands.append(cmd)
        process = local.Process(role, 0, cmd, str(cluster.state_dir / f"{role}.log"))
        cluster.processes.append(process)
        return process

    monkeypatch.setattr(local, "_start", fake_start)
    monkeypatch.setattr(local, "wait_for_port", lambda *args, **kwargs: None)
    return commands


@pytest.mark.parametrize("address", REMOTE)
def test_flower_up_refuses_plaintext_off_loopback(
    address: str, tmp_path: Path, started: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["flower", "up", "--nodes", "1", "--superlink", address, "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert not started
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"firm: error: --superlink {address}: ")
    assert "--tls" in err and "--insecure-non-loopback" in err


def test_flower_up_on_loopback_and_with_the_opt_out(
    tmp_path: Path, started: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["flower", "up", "--nodes", "1", "--superlink", "127.0.0.1:8000", "--dir", str(tmp_path / "a")]) == 0
    assert started[0][started[0].index("--host") + 1] == "127.0.0.1" and "--insecure" in started[0]
    started.clear()
    argv = ["flower", "up", "--nodes", "1", "--superlink", "0.0.0.0:8000", "--dir", str(tmp_path / "b")]
    assert cli.main([*argv, "--insecure-non-loopback"]) == 0
    assert started[0][started[0].index("--host") + 1] == "0.0.0.0" and "--insecure" in started[0]
    assert "firm: error" not in capsys.readouterr().err
