"""Plumbing: `firm train engine=flower` submits the run to a running SuperLink with `flwr run` and streams its log.

The run is a Flower App built on the fly in a temporary directory: a pyproject.toml whose
components are FIRM's ServerApp and ClientApp (`firm.engines.flower.apps`, installed on the
SuperLink host and on every site) and whose `[tool.flwr.app.config]` is the whole FIRM config
(`config_to_run_config`). The SuperLink connection (`engine.superlink`, TLS from
`engine.root_certificates`) goes into the `config.toml` of a Flower home directory
(`engine.flwr_home`, else a temporary one), so the user's own ~/.flwr is never touched. Without
TLS the connection must stay on loopback (`firm.transport.check_engine_transport`, the TLS rule of
docs/deployment.md), unless `engine.insecure_non_loopback` says the path is encrypted elsewhere.

The ServerApp writes the run directory on the SuperLink's host: `output.dir` is made absolute
here, and the run is named here, so that on loopback `firm train` can read the result back.
`app_project` and `flwr_run` also submit the reward predictor's runs (firm.rewards.flower).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

import tomli_w

from firm.config import Config
from firm.engines.flower.local import CONNECTION, console_script, flower_env, flwr_home_for
from firm.engines.flower.records import RESUME_FROM, RunConfig, config_to_run_config
from firm.rundir import run_name
from firm.transport import check_engine_transport, is_loopback_address, validate_secure_aggregation
from firm.version import __version__


class FlowerRunError(RuntimeError):
    """The Flower run could not be submitted or did not complete."""


def app_pyproject(config: Config, resume_from: Path | None = None) -> str:
    """The pyproject.toml of the Flower App that runs `config` (or continues the run directory `resume_from`)."""
    run_config = config_to_run_config(config)
    if resume_from is not None:
        run_config[RESUME_FROM] = str(resume_from.absolute())
    return app_project(
        run_config,
        "firm.engines.flower.apps:server_app",
        "firm.engines.flower.apps:client_app",
        "A FIRM run: federated multi-objective alignment (ServerApp and ClientApp from the firm package)",
    )


def app_project(run_config: RunConfig, serverapp: str, clientapp: str, description: str) -> str:
    """The pyproject.toml of a Flower App whose components are firm's `serverapp` and `clientapp` (module:object)."""
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "firm-run",
            "version": __version__,
            "description": description,
            "license": "Apache-2.0",
            "dependencies": [f"firm=={__version__}"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "firm",
                    "components": {"serverapp": serverapp, "clientapp": clientapp},
                    "config": run_config,
                }
            }
        },
    }
    return tomli_w.dumps(project)


def prepare(config: Config) -> Config:
    """The config as the ServerApp will run it: absolute output directory, a fixed run name."""
    output = config.output
    name = run_name(config)
    return dataclasses.replace(config, output=dataclasses.replace(output, dir=str(Path(output.dir).absolute()), name=name))


def submit(config: Config, *, quiet: bool = False, resume_from: Path | None = None) -> Path:
    """Run `config` on the SuperLink at `config.engine.superlink`; returns the run directory once it completed.

    The directory is on the SuperLink's host; when that is another machine it does not exist here.
    `resume_from`: continue that run directory from its latest checkpoint instead (`firm train --resume`):
    a new Flower run whose ServerApp resumes it; the clients' states are on their nodes (docs/deployment.md).
    """
    check_engine_transport(config.engine)  # also for a Config built in code, which `validate` never saw
    validate_secure_aggregation(config)  # before anything is submitted, as the ServerApp would refuse it
    config = prepare(config)
    run_dir = resume_from or Path(config.output.dir) / config.output.name
    summary_path = run_dir / "summary.json"
    before = _stamp(summary_path)  # a resumed run's directory has the summary of its last session
    eng = config.engine
    returncode = flwr_run(app_pyproject(config, resume_from), eng.superlink, eng.root_certificates, eng.flwr_home, quiet=quiet)
    if _stamp(summary_path) == before:  # no summary written by this run
        # A remote SuperLink writes the run directory on its own host; a loopback one writes it here, so a
        # missing summary there means the ServerApp failed (flwr run exits 0 even then, e.g. an infeasible palette).
        if returncode == 0 and not is_loopback_address(eng.superlink):
            return run_dir
        raise FlowerRunError(
            f"the Flower run wrote no {summary_path} (flwr run exited with {returncode}); "
            f"is a SuperLink listening on {eng.superlink}? See its log (firm flower up: .firm-flower/superlink.log)"
        )
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "completed":
        raise FlowerRunError(f"the Flower run ended with status {summary.get('status')!r}: {summary.get('error', '')}")
    return run_dir


def flwr_run(pyproject: str, superlink: str, root_certificates: str, flwr_home: str, *, quiet: bool = False) -> int:
    """`flwr run --stream` of the App whose pyproject.toml is `pyproject`, on the SuperLink at `superlink`; its exit code.

    The App is a temporary directory holding only that file; the connection is written to the
    config.toml of `flwr_home` (empty: a temporary Flower home), never to the user's ~/.flwr.
    """
    with tempfile.TemporaryDirectory(prefix="firm-flower-app-") as app:
        (Path(app) / "pyproject.toml").write_text(pyproject)
        with flwr_home_for(superlink, root_certificates, flwr_home or None) as home:
            cmd = [console_script("flwr"), "run", app, CONNECTION, "--stream"]
            out = subprocess.DEVNULL if quiet else None
            env = flower_env(home)
            env.pop("VIRTUAL_ENV", None)
            return subprocess.run(cmd, env=env, stdout=out, stderr=out, check=False).returncode


def _stamp(path: Path) -> int | None:
    """The file's modification time in ns, or None if it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
