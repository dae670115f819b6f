"""Conciseness: shorter replies score higher.

reward = 1 / (1 + words / SCALE_WORDS), in (0, 1]: 1 for an empty reply, 0.5 at SCALE_WORDS
words. Smooth in the length, so every extra word costs a little (a hard cap would give no signal
below it). Words are whitespace-separated tokens of the decoded text, which is model-agnostic.
"""

from __future__ import annotations

from typing import Any

SCALE_WORDS = 16.0
"""Number of words at which the reward is 0.5."""


def conciseness(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """1 / (1 + number of words / SCALE_WORDS) per completion."""
    return [1.0 / (1.0 + len(text.split()) / SCALE_WORDS) for text in completions]
