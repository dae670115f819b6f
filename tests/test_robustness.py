"""Regressions from review: NaN-safe masking, failures keep a summary, readable outputs, clear user errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

import firm
from firm.config import ConfigError, LoraConfig, ModelConfig
from firm.data import Prompt
from firm.objectives import resolve_objective
from firm.policy import PolicyError, build_policy
from firm.policy_gradient import PolicyGradientProblem
from firm.validation import load_config
from tests.conftest import TINY_MODEL, tiny_config


def test_garbage_after_eos_cannot_poison_the_gradient(tiny_policy) -> None:  # type: ignore[no-untyped-def]
    problem = PolicyGradientProblem(
        tiny_policy, [("c", resolve_objective("conciseness"))], [Prompt("How was your day today?")],
        samples_per_prompt=4, max_new_tokens=10, temperature=1.0, beta_kl=0.1, clip_eps=0.2,
        advantage_eps=1e-6, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    # Pretend the reference gives absurd log-probs where the mask is 0 (pad tokens after EOS).
    problem.mask[:, -3:] = 0.0
    problem.ref_logprobs = torch.where(problem.mask.bool(), problem.ref_logprobs, torch.full_like(problem.ref_logprobs, 1e4))
    grads = problem.objective_gradients()
    assert torch.isfinite(grads).all()
    assert torch.isfinite(torch.tensor(problem.stats["kl"]))


def test_failure_in_first_evaluation_still_writes_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_rewards.py").write_text("def bad(prompts, completions, **kw):\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tiny_config(tmp_path, 'objectives.names=["broken_rewards:bad", "conciseness"]', "output.name=broken")
    with pytest.raises(firm.objectives.ObjectiveError):
        firm.run(config)
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["status"] == "failed" and "broken_rewards:bad" in summary["error"]


def test_outputs_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        result = firm.run(tiny_config(tmp_path, "federation.rounds=1"))
    finally:
        os.umask(old)
    for path in [result.run_dir / "config.toml", result.run_dir / "summary.json", result.run_dir / "final_adapter"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path, oct(mode))
    ckpt = next((result.run_dir / "checkpoints").iterdir())
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o755
    assert stat.S_IMODE((ckpt / "adapter_model.safetensors").stat().st_mode) == 0o644


def test_auto_named_run_dirs_never_collide(tmp_path: Path) -> None:
    from firm.rundir import RunDir

    config = load_config(None, [f'output.dir="{tmp_path.as_posix()}"'])
    paths = {RunDir(config, "test").path for _ in range(3)}
    assert len(paths) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.device=gpu"], "model.device: 'gpu' is not a torch device"),
        (["lora.dropout=1.5"], "lora.dropout: must be in [0, 1)"),
        (
            ['objectives.names=["positiveness", "no_such_module_xyz:f"]'],
            "objectives.names[1]: objective 'no_such_module_xyz:f': cannot import",
        ),
    ],
)
def test_more_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_unmatched_lora_targets_and_missing_model_are_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"lora.target_modules \['nope'\]"):
        build_policy(TINY_MODEL, LoraConfig(target_modules=("nope",)), seed=0)
    with pytest.raises(PolicyError, match="cannot be loaded"):
        build_policy(ModelConfig(name=str(tmp_path / "no-model-here")), LoraConfig(), seed=0)


def test_lora_dropout_only_in_the_gradient_forward() -> None:
    from firm.logprobs import token_logprobs

    policy = build_policy(TINY_MODEL, LoraConfig(dropout=0.5), seed=0)
    gen = torch.Generator().manual_seed(0)
    policy.set_adapter({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in policy.get_adapter().items()})
    problem = PolicyGradientProblem(
        policy, [("c", resolve_objective("conciseness"))], [Prompt("Tell me about the ocean.")],
        samples_per_prompt=2, max_new_tokens=6, temperature=1.0, beta_kl=0.0, clip_eps=0.2,
        advantage_eps=1e-6, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    with torch.no_grad():
        eval_a = token_logprobs(policy, problem.rollout, 1.0)
        eval_b = token_logprobs(policy, problem.rollout, 1.0)
        with policy.lora_dropout():
            train_a = token_logprobs(policy, problem.rollout, 1.0)
            train_b = token_logprobs(policy, problem.rollout, 1.0)
    assert torch.equal(eval_a, eval_b)  # eval mode outside the context
    assert not torch.equal(train_a, train_b)  # dropout active inside it
