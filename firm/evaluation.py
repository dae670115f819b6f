"""Evaluation of the global adapter on the held-out prompts (DESIGN.md section 5).

- `eval.<objective>`: mean reward of completions sampled on the held-out prompts with a fixed
  generator (the same for every round and algorithm, so curves compare like with like).
- `kl`: mean per-token KL(pi_theta || pi_ref) over the sampled completion tokens, computed
  exactly over the vocabulary at each position (not a one-sample estimate):
  sum_v pi_theta(v | prefix) (log pi_theta(v | prefix) - log pi_ref(v | prefix)), with both
  distributions at the sampling temperature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from firm.data import Prompt
from firm.objectives import Objective, score
from firm.policy import Policy
from firm.rollout import completion_logits, sample
from firm.seeding import EVAL, torch_generator

EVAL_CHUNK = 16
"""Held-out prompts sampled per batch."""


@torch.no_grad()
def evaluate(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: Sequence[Prompt],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> tuple[dict[str, float], float]:
    """(mean reward per objective, mean per-token KL to the reference) of the live adapter."""
    generator = torch_generator(policy.device, seed, EVAL)
    reward_sum = torch.zeros(len(objectives), dtype=torch.float64)
    num_seq = 0
    kl_sum, kl_tokens = 0.0, 0.0
    for start in range(0, len(prompts), EVAL_CHUNK):
        chunk = list(prompts[start : start + EVAL_CHUNK])
        rollout = sample(policy, [p.text for p in chunk], samples_per_prompt, max_new_tokens, temperature, generator)
        rewards = score(
            objectives,
            [chunk[g].text for g in rollout.group],
            rollout.completions,
            completion_ids=rollout.completion_ids,
            group=rollout.group,
            reference=[chunk[g].reference for g in rollout.group],
        )  # [S, M]
        reward_sum += rewards.to(torch.float64).sum(dim=0)
        num_seq += rewards.shape[0]
        logp = torch.log_softmax(completion_logits(policy, rollout, temperature), dim=-1)  # [S, T, V]
        with policy.reference():
            logq = torch.log_softmax(completion_logits(policy, rollout, temperature), dim=-1)
        kl_tok = (logp.exp() * (logp - logq)).sum(dim=-1)  # [S, T]
        kl_sum += float((kl_tok * rollout.completion_mask).sum())
        kl_tokens += float(rollout.completion_mask.sum())
    means = (reward_sum / max(num_seq, 1)).tolist()
    return {name: means[m] for m, (name, _) in enumerate(objectives)}, kl_sum / max(kl_tokens, 1.0)
