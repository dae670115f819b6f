"""Positiveness: VADER sentiment of the completion (Hutto and Gilbert 2014), mapped to [0, 1].

reward = (compound + 1) / 2, where VADER's compound score lies in [-1, 1]; 0.5 is neutral.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def positiveness(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """VADER compound sentiment of each completion, mapped from [-1, 1] to [0, 1]."""
    analyzer = _analyzer()
    return [(analyzer.polarity_scores(text)["compound"] + 1.0) / 2.0 for text in completions]
