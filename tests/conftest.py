"""Shared fixtures: offline environment, a tiny config, and one tiny policy per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process (torch's OpenMP pool, numpy's and scipy's OpenBLAS): the tiny
# model's matrices gain nothing from a second thread, and the Flower tests run 4-10 such processes
# at once on a 2-core machine, where a 2-thread pool stalls whenever another process holds one of
# its cores (with one other busy process, a tiny run took 2.5x as long; with the machine shared, a
# palette test took 42 s instead of 3 s). Set before torch or numpy load; the SuperLink, SuperNodes,
# workers and `firm` subprocesses inherit it. `OMP_NUM_THREADS=2 make test-slow` gives SmolLM2 both cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The SuperLink's SuperExec looks for a new run to start every second by default (flwr 1.41,
# flwr/supercore/superexec/run_superexec.py); the loopback tests submit a dozen runs.
os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")

import contextlib
import dataclasses
import io
import traceback
from pathlib import Path

import pytest

import firm.validation
from firm.config import Config, ModelConfig
from firm.validation import load_config

TINY_MODEL = ModelConfig(name="tiny", compute_dtype="float32")
"""The tiny random model in float32 on every machine (see `tiny_overrides`)."""


def tiny_overrides(tmp_path: Path) -> list[str]:
    """The dotted overrides of `tiny_config`, for tests that go through the CLI."""
    return [
        "model.name=tiny",
        # float32 on every machine: `auto` picks bfloat16 on a CPU with AVX512-BF16 or AMX, and the
        # pinned figures (tests/test_pinned.py) and tolerances are float32's; tests/test_precision.py
        # covers bfloat16 explicitly.
        "model.compute_dtype=float32",
        'objectives.names=["positiveness", "conciseness"]',
        'data.sources=["builtin"]',
        "data.partition=iid",
        "data.provocative_ratios=[]",
        "federation.num_clients=2",
        "federation.clients_per_round=2",
        "federation.rounds=2",
        "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=12",
        "eval.num_prompts=4",
        f"output.dir={tmp_path.as_posix()!r}".replace("'", '"'),
        "output.progress=false",
        # No plots or report.html at the end of each run (about 3 s of a 5 s tiny run): the tests of the
        # report (tests/test_report.py, the palette's, one Flower run's) set output.report=true.
        "output.report=false",
    ]


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What `firm_cli` saw: the fields of `subprocess.CompletedProcess` that the tests read."""

    returncode: int
    stdout: str
    stderr: str


def firm_cli(*args: str) -> CliResult:
    """`firm <args>` in this process: `firm.cli.main(list(args))` with its stdout and stderr captured.

    A fresh interpreter per CLI call cost ~5 s of importing torch, transformers and peft; this runs
    the same `main` that `python -m firm` runs (`firm/__main__.py` is `sys.exit(main())`), and
    `tests/test_end_to_end.py::test_cli_train_subprocess` keeps one real `python -m firm` run.
    As the interpreter would: a `SystemExit` (argparse's exit 2) gives its code (None -> 0, a
    message -> printed, 1), and any other uncaught exception prints its traceback to stderr and
    gives 1, so `"Traceback" not in stderr` still means what it says. Each call starts with an
    empty `firm.validation._WARNED`, as a new process does, so a once-per-process warning is printed
    even if this process printed it before; the registry is put back afterwards.
    """
    from firm.cli import main

    out, err = io.StringIO(), io.StringIO()
    warned = firm.validation._WARNED
    firm.validation._WARNED = set()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returncode = main(list(args))
            except SystemExit as exit_:
                code = exit_.code
                if code is None or isinstance(code, int):
                    returncode = code or 0
                else:
                    print(code, file=err)
                    returncode = 1
            except Exception:
                err.write(traceback.format_exc())
                returncode = 1
    finally:
        firm.validation._WARNED = warned
    return CliResult(returncode, out.getvalue(), err.getvalue())


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """2 clients x 2 rounds x 2 objectives on the tiny model: the end-to-end smoke size."""
    base = tiny_overrides(tmp_path)
    return load_config(None, [*base, *overrides])


def as_flower_task(monkeypatch: pytest.MonkeyPatch, node_id: int = 1) -> None:
    """Stamp this process as a Flower task: messages take their run id from the task identity that Flower sets
    inside a real ServerApp or ClientApp process; tests that build messages outside one need it."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", node_id), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="session")
def tiny_policy():  # type: ignore[no-untyped-def]
    from firm.config import LoraConfig
    from firm.policy import build_policy

    return build_policy(TINY_MODEL, LoraConfig(), seed=0)
