"""Diversity: distinct-n (Li et al. 2016) across the samples of one prompt, credited per sample.

Distinct-n of a group is (number of distinct n-grams) / (number of n-grams) over the G samples of
one prompt. A group-level number would give every sample of a prompt the same reward, hence a
zero group-relative advantage and no gradient. So each sample is credited with its share: the
fraction of its own n-grams (n = 1 and 2, averaged) that occur in no other sample of its group.
The group mean of this score rises and falls with the group's distinct-n.

A sample with no n-grams (empty reply) scores 0; a prompt with a single sample scores 1.
Needs the `group` keyword (index of each completion's prompt); without it all completions are
treated as one group.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

ORDERS = (1, 2)


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def diversity(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Per-sample share of n-grams unique within its prompt's group, averaged over n in ORDERS."""
    group: list[int] = list(kwargs.get("group") or [0] * len(completions))
    members: dict[int, list[int]] = defaultdict(list)
    for idx, g in enumerate(group):
        members[g].append(idx)
    words = [text.lower().split() for text in completions]
    rewards = [0.0] * len(completions)
    for idxs in members.values():
        per_order: dict[int, list[float]] = {i: [] for i in idxs}
        for n in ORDERS:
            grams = {i: _ngrams(words[i], n) for i in idxs}
            counts = Counter(g for i in idxs for g in grams[i])  # in how many samples each n-gram occurs
            for i in idxs:
                if grams[i]:
                    per_order[i].append(sum(counts[g] == 1 for g in grams[i]) / len(grams[i]))
        for i in idxs:
            rewards[i] = sum(per_order[i]) / len(per_order[i]) if per_order[i] else 0.0
    return rewards
