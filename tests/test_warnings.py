"""A run prints no deprecation warnings from transformers or peft (they would cut through the progress bar).

pyproject's pytest settings ignore FutureWarning and DeprecationWarning for the rest of the suite;
here every warning is recorded, whatever those settings say.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from firm.config import LoraConfig
from firm.logprobs import token_logprobs
from firm.policy import build_policy
from firm.rollout import sample
from firm.train import run
from tests.conftest import TINY_MODEL, tiny_config

DEPRECATIONS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


def _deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return sorted(
        {f"{w.category.__name__} ({w.filename}:{w.lineno}): {w.message}" for w in caught if issubclass(w.category, DEPRECATIONS)}
    )


def test_a_tiny_run_and_both_samplers_warn_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(tiny_config(tmp_path, "federation.rounds=1"))  # model and LoRA built, rollouts, gradient steps, eval, saves
        policy = build_policy(TINY_MODEL, LoraConfig(), seed=0)
        generator = torch.Generator().manual_seed(0)
        for sampler in ("plain", "fast"):
            rollout = sample(policy, ["How was your day today?"], 2, 6, 1.0, generator, sampler=sampler)  # type: ignore[arg-type]
            for method in ("plain", "fast"):
                token_logprobs(policy, rollout, 1.0, method)  # type: ignore[arg-type]
    found = _deprecations(caught)
    assert not found, "\n".join(found)
