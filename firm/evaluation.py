"""Evaluation of the global adapter on the held-out prompts (docs/design.md section 6).

- `eval.<objective>`: mean reward of completions sampled on the held-out prompts with a fixed
  generator (the same for every round and algorithm, so curves compare like with like).
- `eval_se.<objective>`: the standard error of that mean. The G completions of one prompt are not
  independent draws of the held-out distribution (they share the prompt), so the unit is the
  prompt: with rbar_j the mean reward of prompt j's G completions and P prompts,
      mean = (1/P) sum_j rbar_j,   se = sd(rbar_1..rbar_P) / sqrt(P)   (sd with P - 1; None if P < 2)
  (the cluster-robust standard error of a mean over equal clusters).
- Common random numbers: prompt chunk c is sampled from its own generator (Stream.EVAL, seed, 0,
  c), so every round, algorithm and preference of a run with the same seed draws the same random
  numbers for the same prompt, whatever the earlier chunks decoded; differences between two runs'
  evaluations are then paired, prompt by prompt.
- `kl`: mean per-token KL(pi_theta || pi_ref) over the sampled completion tokens, computed
  exactly over the vocabulary at each position (not a one-sample estimate):
  sum_v pi_theta(v | prefix) (log pi_theta(v | prefix) - log pi_ref(v | prefix)), with both
  distributions at the sampling temperature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from firm.data import Prompt
from firm.logprobs import completion_logits
from firm.objectives import Objective, score
from firm.policy import Policy
from firm.policy_gradient import masked_rows
from firm.rollout import sample
from firm.seeding import Stream, torch_generator

EVAL_CHUNK = 8
"""Held-out prompts sampled per batch (bounds the [S, T, vocab] logits held for the exact KL)."""


@dataclass(frozen=True)
class Evaluation:
    """Held-out rewards of one adapter (module docstring)."""

    means: dict[str, float]
    """Mean reward per objective over the P x G completions."""
    stderr: dict[str, float | None]
    """Standard error of each mean, prompts as the unit (None with fewer than 2 prompts)."""
    kl: float
    """Mean per-token KL(pi_theta || pi_ref), exact over the vocabulary."""
    prompt_means: list[list[float]]
    """[P][M] mean reward of each prompt's G completions: what the paired comparisons use."""


def prompt_stderr(prompt_means: torch.Tensor) -> list[float | None]:
    """[P, M] per-prompt means -> [M] standard errors sd_j / sqrt(P) (sd with P - 1), None if P < 2."""
    num = prompt_means.shape[0]
    if num < 2:
        return [None] * prompt_means.shape[1]
    return (prompt_means.std(dim=0, correction=1) / num**0.5).tolist()


@torch.no_grad()
def evaluate(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: Sequence[Prompt],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> Evaluation:
    """Mean reward per objective with its standard error, and the mean per-token KL to the reference."""
    per_prompt: list[torch.Tensor] = []
    kl_sum, kl_tokens = 0.0, 0.0
    for chunk_idx, start in enumerate(range(0, len(prompts), EVAL_CHUNK)):
        chunk = list(prompts[start : start + EVAL_CHUNK])
        generator = torch_generator(policy.device, Stream.EVAL, seed, 0, chunk_idx)
        rollout = sample(policy, [p.text for p in chunk], samples_per_prompt, max_new_tokens, temperature, generator)
        logp = torch.log_softmax(completion_logits(policy, rollout, temperature), dim=-1)  # [S, T, V]
        with policy.reference():
            logq = torch.log_softmax(completion_logits(policy, rollout, temperature), dim=-1)
        completion = rollout.input_ids[:, rollout.prompt_len :]
        ref_token_logprobs = logq.gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # [S, T]
        rewards = score(
            objectives,
            [chunk[g].text for g in rollout.group],
            rollout.completions,
            device=policy.device,
            completion_ids=rollout.completion_ids,
            group=rollout.group,
            reference=[chunk[g].reference for g in rollout.group],
            ref_logprobs=masked_rows(ref_token_logprobs, rollout.completion_mask),
        )  # [S, M]
        per_prompt.append(rewards.to("cpu", torch.float64).view(len(chunk), samples_per_prompt, -1).mean(dim=1))  # [B, M]
        kl_tok = (logp.exp() * (logp - logq)).sum(dim=-1)  # [S, T]
        kl_sum += float((kl_tok * rollout.completion_mask).sum())
        kl_tokens += float(rollout.completion_mask.sum())
    names = [name for name, _ in objectives]
    table = torch.cat(per_prompt) if per_prompt else torch.zeros(0, len(names), dtype=torch.float64)  # [P, M]
    means = table.mean(dim=0).tolist() if len(table) else [0.0] * len(names)
    return Evaluation(
        means=dict(zip(names, means, strict=True)),
        stderr=dict(zip(names, prompt_stderr(table), strict=True)),
        kl=kl_sum / max(kl_tokens, 1.0),
        prompt_means=table.tolist(),
    )


@torch.no_grad()
def base_vs_final_samples(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[dict[str, object]]:
    """One completion per prompt from the base model (adapter disabled) and from the live adapter.

    Both use the same generator seed, so differences come from the adapter. Rows are what
    `samples.jsonl` holds: {"prompt", "base", "final", "base_rewards", "final_rewards"}.
    """
    texts = [p.text for p in prompts]

    def completions_and_rewards(use_base: bool) -> tuple[list[str], list[dict[str, float]]]:
        generator = torch_generator(policy.device, Stream.EVAL, seed, 1)
        with policy.reference() if use_base else contextlib.nullcontext():
            rollout = sample(policy, texts, 1, max_new_tokens, temperature, generator)
        with policy.reference():
            ref_logits = completion_logits(policy, rollout, temperature)  # [B, T, V]
        completion = rollout.input_ids[:, rollout.prompt_len :]
        ref_lp = torch.log_softmax(ref_logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # [B, T]
        rewards = score(
            objectives,
            texts,
            rollout.completions,
            device=policy.device,
            completion_ids=rollout.completion_ids,
            group=list(range(len(texts))),
            reference=[p.reference for p in prompts],
            ref_logprobs=masked_rows(ref_lp, rollout.completion_mask),
        )  # [B, M]
        rows = [{name: float(rewards[i, m]) for m, (name, _) in enumerate(objectives)} for i in range(len(texts))]
        return rollout.completions, rows

    base, base_rewards = completions_and_rewards(use_base=True)
    final, final_rewards = completions_and_rewards(use_base=False)
    return [
        {"prompt": t, "base": b, "final": f, "base_rewards": br, "final_rewards": fr}
        for t, b, f, br, fr in zip(texts, base, final, base_rewards, final_rewards, strict=True)
    ]
