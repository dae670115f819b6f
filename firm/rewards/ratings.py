"""Human ratings as groups of rated texts: chitchat-dataset's post-conversation ratings, one group per participant.

Source: chitchat-dataset (the package's `dataset.json`, 7,168 conversations between two people on
a shared starter question). 5,988 of them carry `ratings` = {"witty", "upbeat", "interesting"}, each
an integer 1-10 (docs/rewards/data.md measures them). An item is one rated conversation: its text,
its rating (`level`), its starter question (what PluralLLM's alignment score groups by) and its
group, the participant the rating is attributed to.

Assumption, not documented by the dataset: the rating is the impression of the person who opened
the conversation, so a conversation belongs to the sender of its first message. Nobody says who
entered the rating; the first sender is the one who opened with the prompt, and grouping by them
gives groups whose mean ratings differ far beyond chance (the ANOVA in docs/rewards/data.md).
Caveat: 38% of the rated conversations have a single turn (the opener wrote and nobody answered);
71-77% of those are rated exactly 5 (the slider's likely default). `load_chitchat(min_turns=2)` drops them.

`split_groups` holds some groups out entirely (unseen: PluralLLM's generalisation view) and splits
each other group's items into train and test. Departure from PluralLLM: its groups are OpinionQA's
demographic groups answering multiple-choice survey questions; here a group is one person and a
"question" is one of 35 starter prompts, each rated conversation one answer on a 1-10 scale.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firm.data import _package_dir
from firm.seeding import Stream, derive_seed, numpy_rng

ATTRIBUTES = ("witty", "upbeat", "interesting", "mean")
"""The ratings one can learn: the three the dataset asks for, and `mean`, their mean rounded half up."""
RATED = ("witty", "upbeat", "interesting")
LEVELS = 10
"""Ratings are integers 1..LEVELS."""

UNSEEN_STREAM = 11
"""Sub-stream of `Stream.PARTITION` that draws the unseen groups."""
ITEMS_STREAM = 12
"""Sub-stream of `Stream.PARTITION` (with the group's index) that draws a seen group's test items."""
VALIDATION_STREAM = 13
"""Sub-stream of `Stream.PARTITION` whose seed splits the seen groups' training items into train and validation."""


@dataclass(frozen=True)
class RatedText:
    """One rated conversation."""

    text: str
    """The conversation: its turns' texts in order, one turn per line (a turn's messages joined by " "), cut to max_chars."""
    level: int
    """The rating, 1..LEVELS (`mean`: the mean of the three ratings, rounded half up)."""
    question: str
    """The conversation's starter prompt: the "question" PluralLLM's alignment score groups by."""
    group: str
    """The participant the rating is attributed to: the sender of the conversation's first message."""


@dataclass(frozen=True)
class RatingSplit:
    """Seen groups' train and test items, and the groups never trained on."""

    train: dict[str, list[RatedText]]
    """Seen groups: their training items."""
    test: dict[str, list[RatedText]]
    """Seen groups: their held-out items (the same keys as `train`)."""
    unseen: dict[str, list[RatedText]]
    """Groups never trained on: all their items."""


def _check_attribute(attribute: str) -> None:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown rating attribute {attribute!r}: choose one of {', '.join(ATTRIBUTES)}")


def _score(value: Any) -> float | None:
    """A rating value (an int, a float or a numeric string) as a number in [1, LEVELS], else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 1 <= number <= LEVELS else None  # NaN fails both comparisons


def turn_lines(messages: Any) -> list[str]:
    """One line per non-empty turn: its messages' texts joined by " " (whitespace inside a message collapsed)."""
    lines: list[str] = []
    for turn in messages if isinstance(messages, list) else []:
        texts = (
            [m["text"] for m in turn if isinstance(m, dict) and isinstance(m.get("text"), str)] if isinstance(turn, list) else []
        )
        line = " ".join(" ".join(t.split()) for t in texts if t.strip())
        if line:
            lines.append(line)
    return lines


def conversation_text(messages: Any, max_chars: int) -> str:
    """The conversation as text: `turn_lines` joined by newlines, cut to max_chars characters."""
    return "\n".join(turn_lines(messages))[:max_chars].rstrip()


def rate_conversation(conversation: Mapping[str, Any], attribute: str, *, max_chars: int = 1000) -> RatedText | str:
    """One conversation of dataset.json as a RatedText, or the reason it is skipped (a short phrase).

    Skipped: no rating for `attribute` (for `mean`: for any of the three) in 1..LEVELS; no
    starter prompt; no text; no sender on the first message. A rating that is not a whole number
    (none in the data) is rounded half up, as the mean is.
    """
    _check_attribute(attribute)
    ratings = conversation.get("ratings")
    if not isinstance(ratings, Mapping) or not ratings:
        return "no ratings"
    scores = [_score(ratings.get(name)) for name in (RATED if attribute == "mean" else (attribute,))]
    if any(s is None for s in scores):
        return "rating missing or not a number in 1..10"
    value = sum(s for s in scores if s is not None) / len(scores)
    level = math.floor(value + 0.5)  # half up; a mean of three integers is never exactly x.5
    question = conversation.get("prompt")
    if not isinstance(question, str) or not question.strip():
        return "no starter prompt"
    messages = conversation.get("messages")
    text = conversation_text(messages, max_chars)
    if not text:
        return "no text"
    first = messages[0][0] if messages and isinstance(messages[0], list) and messages[0] else None
    sender = first.get("sender") if isinstance(first, dict) else None
    if not isinstance(sender, str) or not sender:
        return "no sender"
    return RatedText(text=text, level=level, question=" ".join(question.split()), group=sender)


@functools.cache
def _conversations() -> tuple[tuple[str, dict[str, Any]], ...]:
    """dataset.json's conversations as (conversation id, conversation), in conversation-id order."""
    path = _package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"
    return tuple(sorted(json.loads(path.read_text(encoding="utf-8")).items()))


@functools.cache
def _rated(attribute: str, max_chars: int) -> tuple[tuple[tuple[RatedText, int], ...], tuple[tuple[str, int], ...]]:
    """(item, its number of turns) per usable conversation, and (reason, count) per skip reason."""
    items: list[tuple[RatedText, int]] = []
    skipped: Counter[str] = Counter()
    for _, conversation in _conversations():
        rated = rate_conversation(conversation, attribute, max_chars=max_chars)
        if isinstance(rated, str):
            skipped[rated] += 1
        else:
            items.append((rated, len(turn_lines(conversation.get("messages")))))
    return tuple(items), tuple(sorted(skipped.items()))


def skipped_conversations(attribute: str = "interesting", *, min_turns: int = 1) -> dict[str, int]:
    """How many of dataset.json's conversations `load_chitchat` skips, by reason (`rate_conversation`'s phrases)."""
    _check_attribute(attribute)
    items, skipped = _rated(attribute, 1000)
    short = sum(turns < min_turns for _, turns in items)
    return dict(skipped) | ({f"fewer than {min_turns} turns": short} if short else {})


def load_chitchat(
    attribute: str = "interesting", *, min_conversations: int = 20, max_chars: int = 1000, min_turns: int = 1
) -> dict[str, list[RatedText]]:
    """Groups (participants with >= min_conversations rated conversations) -> their items.

    Sorted by group id, each group's items in conversation-id order. A conversation is attributed
    to the sender of its first message (an assumption: see the module docstring); conversations
    `rate_conversation` skips are left out (`skipped_conversations` counts them), and so are those
    with fewer than `min_turns` turns. Addition to the agreed interface: `min_turns=2` drops the
    38% of rated conversations nobody answered (a single turn; 75% of them rated exactly 5, see
    docs/rewards/data.md); the default 1 keeps them.
    """
    _check_attribute(attribute)
    if min_conversations < 1:
        raise ValueError(f"min_conversations must be at least 1, got {min_conversations}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if min_turns < 1:
        raise ValueError(f"min_turns must be at least 1, got {min_turns}")
    items, _ = _rated(attribute, max_chars)
    by_group: dict[str, list[RatedText]] = {}
    for item, turns in items:
        if turns >= min_turns:
            by_group.setdefault(item.group, []).append(item)
    groups = {name: by_group[name] for name in sorted(by_group) if len(by_group[name]) >= min_conversations}
    if not groups:
        most = max((len(v) for v in by_group.values()), default=0)
        raise ValueError(
            f"no participant has {min_conversations} rated conversations ({attribute!r}): the most is {most}; lower min_conversations"
        )
    return groups


def split_groups(
    groups: Mapping[str, Sequence[RatedText]], *, unseen_groups: int, test_fraction: float, seed: int
) -> RatingSplit:
    """Hold `unseen_groups` groups out entirely; split each other group's items into train and test.

    Deterministic in `seed`: the unseen groups are drawn from `numpy_rng(Stream.PARTITION, seed,
    UNSEEN_STREAM)`; the test items of the group at position i (groups in sorted name order) from
    `numpy_rng(Stream.PARTITION, seed, ITEMS_STREAM, i)`, so changing `unseen_groups` moves no other
    group's items. A seen group with n items gets round(test_fraction * n) test items, clipped to
    [1, n - 1] so that both sides are non-empty. Items keep their order on each side.
    """
    names = sorted(groups)
    if not 0 <= unseen_groups < len(names):
        raise ValueError(f"unseen_groups must be in [0, {len(names) - 1}] (there are {len(names)} groups), got {unseen_groups}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    rng = numpy_rng(Stream.PARTITION, seed, UNSEEN_STREAM)
    held_out = {names[i] for i in rng.choice(len(names), size=unseen_groups, replace=False)}
    train: dict[str, list[RatedText]] = {}
    test: dict[str, list[RatedText]] = {}
    unseen: dict[str, list[RatedText]] = {}
    for index, name in enumerate(names):
        items = list(groups[name])
        if name in held_out:
            unseen[name] = items
            continue
        if len(items) < 2:
            raise ValueError(f"group {name!r} has {len(items)} item(s): a seen group needs at least 2 (one train, one test)")
        n_test = min(max(round(test_fraction * len(items)), 1), len(items) - 1)
        order = numpy_rng(Stream.PARTITION, seed, ITEMS_STREAM, index).permutation(len(items))
        is_test = set(order[:n_test].tolist())
        train[name] = [item for i, item in enumerate(items) if i not in is_test]
        test[name] = [item for i, item in enumerate(items) if i in is_test]
    return RatingSplit(train=train, test=test, unseen=unseen)


def validation_split(split: RatingSplit, *, fraction: float, seed: int) -> RatingSplit:
    """The tuning view of `split`: each seen group's *training* items split again into train and validation.

    The returned `test` holds the validation items, `unseen` is empty (unseen groups are test data),
    and the original test items appear nowhere, so a learning rate chosen on this view never saw a
    test item. The inner split is `split_groups` on the training items with the seed
    `derive_seed(Stream.PARTITION, seed, VALIDATION_STREAM)` and the same rounding rule.
    """
    inner = split_groups(
        split.train, unseen_groups=0, test_fraction=fraction, seed=derive_seed(Stream.PARTITION, seed, VALIDATION_STREAM)
    )
    return RatingSplit(train=inner.train, test=inner.test, unseen={})
