"""Coherence: geometric-mean token probability of the reply under the frozen reference model.

reward = exp(mean_t log p_ref(y_t | x, y_<t)), in (0, 1]; a completion with no tokens scores 0.
The reference model is the base model with the LoRA adapter disabled, whose per-token
log-probabilities the engine already computes for the KL term; it passes them as the keyword
`ref_logprobs: list[list[float]]` (one list per completion, one value per completion token), so
this objective runs no model of its own.

Source: the mean token log-likelihood under a fixed language model, the usual fluency proxy
(perplexity = 1 / reward). Deviation: exp of the mean rather than the raw mean log-prob, so the
reward is bounded like the other objectives; its ordering of replies is the same.
"""

from __future__ import annotations

import math
from typing import Any


def coherence(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """exp(mean reference log-prob of the completion's tokens); 0 for an empty completion."""
    ref_logprobs = kwargs.get("ref_logprobs")
    if ref_logprobs is None:
        raise ValueError(
            "coherence needs the engine's reference log-probs: call it with ref_logprobs=[[log p_ref per token] per completion]"
        )
    if len(ref_logprobs) != len(completions):
        raise ValueError(f"coherence: got {len(ref_logprobs)} ref_logprobs rows for {len(completions)} completions")
    rewards = []
    for row in ref_logprobs:
        values = [float(v) for v in row]
        rewards.append(math.exp(sum(values) / len(values)) if values else 0.0)
    return rewards
