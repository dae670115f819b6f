"""The fast paths of issue 8 against the plain reference paths: same tokens, same log-probs, same gradients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from firm.config import ConfigError
from firm.data import Prompt
from firm.logprobs import HEAD_CHUNK_ROWS, fused_token_logprobs, token_logprobs
from firm.objectives import resolve_objective
from firm.policy import Policy
from firm.policy_gradient import PolicyGradientProblem
from firm.rollout import int8_sampler, merged_lora, sample
from firm.validation import load_config

OBJECTIVES = [(n, resolve_objective(n)) for n in ("positiveness", "conciseness", "diversity")]
PROMPTS = [Prompt("How was your day today?"), Prompt("Tell me about the ocean."), Prompt("a b")]
TEXTS = [p.text for p in PROMPTS]


@pytest.fixture
def trained(tiny_policy: Policy) -> Iterator[Policy]:
    """The tiny policy with its adapter moved off the zero-B start (pi_theta != pi_ref), restored afterwards."""
    original = tiny_policy.get_adapter()
    gen = torch.Generator().manual_seed(0)
    tiny_policy.set_adapter({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in original.items()})
    try:
        yield tiny_policy
    finally:
        tiny_policy.set_adapter(original)


def _rollout(policy: Policy, sampler: str, group: int = 4, tokens: int = 10, temperature: float = 1.0, seed: int = 1, **kw: str):  # type: ignore[no-untyped-def]
    return sample(policy, TEXTS, group, tokens, temperature, torch.Generator().manual_seed(seed), sampler=sampler, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1e-4])
def test_fast_sampler_same_tokens_as_plain(trained: Policy, temperature: float) -> None:
    for seed in range(3):
        plain = _rollout(trained, "plain", temperature=temperature, seed=seed)
        fast = _rollout(trained, "fast", temperature=temperature, seed=seed)
        assert fast.completion_ids == plain.completion_ids
        assert torch.equal(fast.input_ids, plain.input_ids)
        assert torch.equal(fast.completion_mask, plain.completion_mask)
        assert fast.behaviour_logprobs is None  # model precision: the sampler is pi_theta itself


def test_fast_sampler_under_reference_samples_the_base_model(trained: Policy) -> None:
    with trained.reference():
        plain = _rollout(trained, "plain")
        fast = _rollout(trained, "fast")
    assert fast.completion_ids == plain.completion_ids
    assert fast.completion_ids != _rollout(trained, "fast").completion_ids  # the adapter does change samples


def test_merged_lora_restores_weights_bit_for_bit(trained: Policy) -> None:
    before = {n: p.detach().clone() for n, p in trained.model.named_parameters()}
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        unmerged = trained.model(input_ids=x).logits
        with merged_lora(trained):
            merged = trained.model(input_ids=x).logits
            changed = [n for n, p in trained.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("base_layer" in n for n in changed)  # only the frozen weights under a LoRA
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    for n, p in trained.model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_merged_lora_restores_after_an_error(trained: Policy) -> None:
    before = {n: p.detach().clone() for n, p in trained.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), merged_lora(trained):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in trained.model.named_parameters())


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("tokens", [1, 10])
def test_fast_logprobs_equal_plain(trained: Policy, group: int, tokens: int) -> None:
    rollout = _rollout(trained, "fast", group=group, tokens=tokens)
    mask = rollout.completion_mask.bool()
    with torch.no_grad():
        plain = token_logprobs(trained, rollout, 0.8, "plain")
        fast = token_logprobs(trained, rollout, 0.8, "fast")
        with trained.reference():
            ref_plain = token_logprobs(trained, rollout, 0.8, "plain")
            ref_fast = token_logprobs(trained, rollout, 0.8, "fast")
    torch.testing.assert_close(fast[mask], plain[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_fast[mask], ref_plain[mask], rtol=0, atol=1e-5)
    assert (fast[mask] - ref_fast[mask]).abs().max() > 1e-3  # pi_theta and pi_ref do differ here


def test_fused_head_matches_autograd_log_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, width, vocab = HEAD_CHUNK_ROWS + 37, 16, 50  # more rows than one chunk
    hidden = torch.randn(rows, width, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, width, generator=gen)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    cot = torch.randn(rows, generator=gen)
    expected = torch.log_softmax(hidden @ weight.T / 0.7, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    (g_expected,) = torch.autograd.grad(expected, hidden, cot, retain_graph=True)
    got = fused_token_logprobs(hidden, weight, targets, 0.7)
    (g_got,) = torch.autograd.grad(got, hidden, cot)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_got, g_expected, rtol=0, atol=1e-5)
    # Batched cotangents (is_grads_batched, as vjp=batched uses) give each row's VJP.
    cots = torch.randn(3, rows, generator=gen)
    (batched,) = torch.autograd.grad(fused_token_logprobs(hidden, weight, targets, 0.7), hidden, cots, is_grads_batched=True)
    for k in range(3):
        (one,) = torch.autograd.grad(expected, hidden, cots[k], retain_graph=True)
        torch.testing.assert_close(batched[k], one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frozen"):
        fused_token_logprobs(hidden, weight.requires_grad_(), targets, 1.0)


def _problem(policy: Policy, vjp: str, logprobs: str, **kw: str) -> PolicyGradientProblem:
    return PolicyGradientProblem(
        policy, OBJECTIVES, PROMPTS, samples_per_prompt=4, max_new_tokens=10, temperature=0.9,
        beta_kl=0.1, clip_eps=0.2, advantage_eps=1e-6, generator=torch.Generator().manual_seed(3),
        vjp=vjp, logprobs=logprobs, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_one_pass_gradients_equal_plain_backward_passes(trained: Policy) -> None:
    """vjp=batched on the fast forward == M separate backward passes on the plain forward, to 1e-5."""
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    reference = _problem(trained, "loop", "plain")
    g_ref = reference.objective_gradients()  # [M, d]
    combined_ref = reference.combined_gradient(weights)
    assert g_ref.abs().max() > 1e-4
    for vjp, logprobs in (("batched", "fast"), ("loop", "fast"), ("batched", "plain")):
        problem = _problem(trained, vjp, logprobs)
        assert problem.rollout.completion_ids == reference.rollout.completion_ids
        torch.testing.assert_close(problem.objective_gradients(), g_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(problem.combined_gradient(weights), combined_ref, rtol=0, atol=1e-5)
    # A second epoch on the same rollout (ratio != 1, clipping active) still agrees.
    fast = _problem(trained, "batched", "fast")
    fast.objective_gradients()
    reference = _problem(trained, "loop", "plain")
    reference.objective_gradients()
    with torch.no_grad():
        for p in trained.params.values():
            p.mul_(1.5)
    torch.testing.assert_close(fast.objective_gradients(), reference.objective_gradients(), rtol=0, atol=1e-5)


def test_int8_rollout_is_close_and_importance_corrected(trained: Policy) -> None:
    rollout = _rollout(trained, "fast", precision="int8")
    mask = rollout.completion_mask.bool()
    assert rollout.behaviour_logprobs is not None
    with torch.no_grad():
        exact = token_logprobs(trained, rollout, 1.0)
    gap = (rollout.behaviour_logprobs - exact)[mask].abs()
    assert 0 < gap.max() < 0.5  # int8 is a different, nearby policy
    problem = _problem(trained, "loop", "fast", precision="int8")
    assert problem.old_logprobs is problem.rollout.behaviour_logprobs  # rho = pi_theta / mu from the first epoch
    assert torch.isfinite(problem.objective_gradients()).all()


def test_int8_sampler_follows_the_adapter(trained: Policy) -> None:
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = int8_sampler(trained).model(input_ids=x).logits
        exact = trained.model(input_ids=x).logits
        with trained.reference():
            reference = int8_sampler(trained).model(input_ids=x).logits
            exact_ref = trained.model(input_ids=x).logits
    assert (before - exact).abs().max() < 0.1 * exact.abs().max()
    assert (reference - exact_ref).abs().max() < 0.1 * exact_ref.abs().max()
    assert (before - reference).abs().max() > 1e-3  # the refresh merged the adapter in one case, not the other


def test_bad_fast_path_settings_are_refused(trained: Policy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"needs rollout\.sampler"):
        _rollout(trained, "plain", precision="int8")
    with pytest.raises(ValueError, match="allowed: fast, plain"):
        _rollout(trained, "turbo")
    with pytest.raises(ValueError, match="allowed: fast, plain"):
        token_logprobs(trained, _rollout(trained, "fast"), 1.0, "turbo")  # type: ignore[arg-type]
    for bad in ("rollout.sampler=turbo", "rollout.precision=int4", "algorithm.logprobs=slow"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])
