"""Helpfulness: semantic relevance of the reply to the prompt, and to a reference answer where one exists.

reward = (cos(prompt, reply) + 1) / 2, in [0, 1], with cosines of MiniLM sentence embeddings
(`firm.objectives.minilm`). Where the keyword `reference` (a list aligned with the completions)
gives a non-empty reference answer, reward = mean of that and (cos(reply, reference) + 1) / 2.
An empty (or whitespace-only) reply scores 0, the floor of the range.

Source: embedding similarity as a cheap relevance proxy (as in BERTScore-style reward proxies);
the model is all-MiniLM-L6-v2. Deviation from a learned helpfulness reward model: it measures
topical relevance, not correctness or completeness, and it cannot tell a relevant refusal from
a relevant answer.
"""

from __future__ import annotations

from typing import Any

import torch

from firm.objectives.minilm import embed


def helpfulness(prompts: list[str], completions: list[str], *, device: torch.device | str = "cpu", **kwargs: Any) -> list[float]:
    """(cos + 1) / 2 of prompt and reply, averaged with that of reply and reference where given (MiniLM on `device`)."""
    references: list[str | None] = list(kwargs.get("reference") or [None] * len(completions))
    if len(references) != len(completions):
        raise ValueError(f"helpfulness: got {len(references)} references for {len(completions)} completions")
    # The G samples of a prompt repeat it: embed each distinct text once.
    texts = sorted({*prompts, *completions, *(r for r in references if r and r.strip())})
    row = {text: i for i, text in enumerate(texts)}
    vectors = embed(texts, device)  # [U, 384], unit norm

    def similarity(a: str, b: str) -> float:
        return (float(vectors[row[a]] @ vectors[row[b]]) + 1.0) / 2.0

    rewards = []
    for prompt, reply, reference in zip(prompts, completions, references, strict=True):
        if not reply.strip():
            rewards.append(0.0)
            continue
        reward = similarity(prompt, reply)
        if reference and reference.strip():
            reward = (reward + similarity(reply, reference)) / 2.0
        rewards.append(reward)
    return rewards
