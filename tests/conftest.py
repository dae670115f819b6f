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

from pathlib import Path

import pytest

from firm.config import Config, load_config


def tiny_overrides(tmp_path: Path) -> list[str]:
    """The dotted overrides of `tiny_config`, for tests that go through the CLI."""
    return [
        "model.name=tiny",
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
    ]


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """2 clients x 2 rounds x 2 objectives on the tiny model: the end-to-end smoke size."""
    base = tiny_overrides(tmp_path)
    return load_config(None, [*base, *overrides])


@pytest.fixture(scope="session")
def tiny_policy():  # type: ignore[no-untyped-def]
    from firm.config import LoraConfig, ModelConfig
    from firm.policy import build_policy

    return build_policy(ModelConfig(name="tiny"), LoraConfig(), seed=0)
