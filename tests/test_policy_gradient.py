"""The LM local step: closed-form cotangent VJPs equal autograd on the explicit losses (docs/design.md section 2)."""

from __future__ import annotations

import pytest
import torch

from firm.data import Prompt
from firm.logprobs import token_logprobs
from firm.objectives import resolve_objective
from firm.policy_gradient import PolicyGradientProblem, group_advantages

OBJECTIVES = [(n, resolve_objective(n)) for n in ("positiveness", "conciseness", "diversity")]
PROMPTS = [Prompt("How was your day today?"), Prompt("Tell me about the ocean.")]


def test_group_advantages_by_hand() -> None:
    # Two prompts x G = 2, M = 2. Prompt 0, objective 0: rewards 1, 3 -> mean 2, population std 1 -> -1, +1.
    # Prompt 0, objective 1: equal rewards 5, 5 -> std 0 -> advantages 0 (no signal, no division by zero).
    # Prompt 1, objective 0: 0, 4 -> mean 2, std 2 -> -1, +1.  Objective 1: 2, 0 -> mean 1, std 1 -> +1, -1.
    rewards = torch.tensor([[1.0, 5.0], [3.0, 5.0], [0.0, 2.0], [4.0, 0.0]])
    adv = group_advantages(rewards, group_size=2, eps=0.0)
    expected = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [1.0, -1.0]])
    torch.testing.assert_close(adv.nan_to_num(0.0), expected)
    adv_eps = group_advantages(rewards, group_size=2, eps=1e-6)
    assert torch.isfinite(adv_eps).all()
    assert adv_eps[0, 1] == 0.0


def _explicit_losses(problem: PolicyGradientProblem, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The losses written out: token-level clipped surrogate per objective and the k3 KL, with autograd."""
    logp = token_logprobs(problem.policy, problem.rollout, problem.temperature)  # [S, T]
    mask, n = problem.mask, problem.mask.sum()
    ratio = torch.exp(logp - old)
    clipped_ratio = ratio.clamp(1 - problem.clip_eps, 1 + problem.clip_eps)
    losses = []
    for m in range(problem.advantages.shape[1]):
        adv = problem.advantages[:, m : m + 1]  # [S, 1]
        surrogate = torch.minimum(ratio * adv, clipped_ratio * adv)
        losses.append(-(surrogate * mask).sum() / n)
    log_r = problem.ref_logprobs - logp
    kl = problem.beta_kl * ((torch.exp(log_r) - log_r - 1) * mask).sum() / n
    return torch.stack(losses), kl, logp


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


@pytest.mark.parametrize("vjp", ["batched", "loop"])
def test_objective_gradients_equal_autograd(tiny_policy, vjp: str) -> None:  # type: ignore[no-untyped-def]
    policy = tiny_policy
    original = policy.get_adapter()
    try:
        gen = torch.Generator().manual_seed(0)
        # Move the adapter off its zero-B start so that pi_theta != pi_ref and the KL gradient is not zero.
        perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
        policy.set_adapter(perturbed)
        problem = PolicyGradientProblem(
            policy, OBJECTIVES, PROMPTS, samples_per_prompt=4, max_new_tokens=10, temperature=1.0,
            beta_kl=0.3, clip_eps=0.02, advantage_eps=1e-6, generator=torch.Generator().manual_seed(1), vjp=vjp,  # type: ignore[arg-type]
        )  # fmt: skip
        params = list(policy.params.values())

        # Epoch 1: ratio = 1 everywhere, nothing clipped.
        # g_m is the gradient of f_m = L_m + beta_kl KL (the KL term is common to every objective).
        grads = problem.objective_gradients()
        assert problem.old_logprobs is not None
        losses, kl, _ = _explicit_losses(problem, problem.old_logprobs)
        assert grads.shape == (3, sum(p.numel() for p in params))
        for m in range(3):
            torch.testing.assert_close(grads[m], _grads(losses[m] + kl, params), rtol=1e-4, atol=1e-7)
        assert _grads(kl, params).abs().sum() > 0  # the KL part is really exercised

        # Epoch 2 after a parameter change: ratios != 1 and, with clip_eps = 0.02, some tokens clipped.
        policy.set_adapter({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in perturbed.items()})
        grads2 = problem.objective_gradients()
        losses2, kl2, logp2 = _explicit_losses(problem, problem.old_logprobs)
        ratio = torch.exp(logp2.detach() - problem.old_logprobs)
        assert ((ratio - 1).abs() > 0.02).any(), "the test must exercise the clipped branch"
        for m in range(3):
            torch.testing.assert_close(grads2[m], _grads(losses2[m] + kl2, params), rtol=1e-4, atol=1e-7)

        # FedAvg's single backward of the weighted loss equals the weighted per-objective gradients.
        w = torch.tensor([0.2, 0.5, 0.3])
        expected = _grads(w[0] * losses2[0] + w[1] * losses2[1] + w[2] * losses2[2] + kl2, params)
        torch.testing.assert_close(problem.combined_gradient(w), expected, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(w @ grads2, expected, rtol=1e-4, atol=1e-7)
    finally:
        policy.set_adapter(original)


def test_rollout_shapes_and_masks(tiny_policy) -> None:  # type: ignore[no-untyped-def]
    problem = PolicyGradientProblem(
        tiny_policy, OBJECTIVES, PROMPTS, samples_per_prompt=3, max_new_tokens=8, temperature=1.0,
        beta_kl=0.0, clip_eps=0.2, advantage_eps=1e-6, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    r = problem.rollout
    assert r.num_sequences == 6 and r.group == [0, 0, 0, 1, 1, 1]
    assert r.completion_mask.shape[1] <= 8
    assert problem.rewards.shape == (6, 3) and problem.advantages.shape == (6, 3)
    assert [len(ids) for ids in r.completion_ids] == r.completion_mask.sum(dim=1).long().tolist()
    # Once a sequence ends (EOS), its mask stays 0.
    diffs = r.completion_mask[:, 1:] - r.completion_mask[:, :-1]
    assert (diffs <= 0).all()


def test_same_generator_seed_same_rollout(tiny_policy) -> None:  # type: ignore[no-untyped-def]
    def completions(seed: int) -> list[list[int]]:
        problem = PolicyGradientProblem(
            tiny_policy, OBJECTIVES[:1], PROMPTS, samples_per_prompt=2, max_new_tokens=6, temperature=1.0,
            beta_kl=0.0, clip_eps=0.2, advantage_eps=1e-6, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        return problem.rollout.completion_ids

    assert completions(5) == completions(5)
    assert completions(5) != completions(6)


def test_kv_cache_sampling_matches_full_forward(tiny_policy) -> None:  # type: ignore[no-untyped-def]
    """Near-greedy sampling with the cache picks the argmax of a full (cache-free) forward at every step."""
    from firm.logprobs import completion_logits
    from firm.rollout import sample

    rollout = sample(tiny_policy, [p.text for p in PROMPTS], 1, 6, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = completion_logits(tiny_policy, rollout, temperature=1.0)  # [S, T, V]
    completion = rollout.input_ids[:, rollout.prompt_len :]
    valid = rollout.completion_mask.bool()
    assert torch.equal(logits.argmax(-1)[valid], completion[valid])
