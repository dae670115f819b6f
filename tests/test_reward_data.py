"""The reward data layer: chitchat ratings as groups (firm.rewards.ratings) and cached MiniLM embeddings (firm.rewards.embeddings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from firm.objectives import minilm
from firm.rewards import embeddings
from firm.rewards.embeddings import EMBEDDING_DIM, embed_texts
from firm.rewards.ratings import (
    LEVELS,
    RatedText,
    _conversations,
    load_chitchat,
    rate_conversation,
    skipped_conversations,
    split_groups,
    validation_split,
)


def _conversation(ratings: object, prompt: object = "What is your favourite food?") -> dict[str, object]:
    """A hand-written dataset.json conversation: A opens with two messages, B answers with one."""
    return {
        "prompt": prompt,
        "ratings": ratings,
        "messages": [
            [{"text": "Hi  there", "sender": "A"}, {"text": "pizza\nfor me", "sender": "A"}],
            [{"text": "sushi!", "sender": "B"}],
        ],
    }


# --------------------------------------------------------------------------- one conversation


def test_a_conversation_becomes_its_turns_one_per_line_attributed_to_the_first_sender() -> None:
    item = rate_conversation(_conversation({"witty": 3, "upbeat": 4, "interesting": "6"}), "interesting")
    assert item == RatedText(text="Hi there pizza for me\nsushi!", level=6, question="What is your favourite food?", group="A")
    cut = rate_conversation(_conversation({"interesting": 6}), "interesting", max_chars=8)
    assert isinstance(cut, RatedText) and cut.text == "Hi there"


@pytest.mark.parametrize(
    ("ratings", "level"),
    [
        ({"witty": 10, "upbeat": 5, "interesting": 5}, 7),  # 20/3 = 6.67 -> 7
        ({"witty": 5, "upbeat": 5, "interesting": 6}, 5),  # 16/3 = 5.33 -> 5
        ({"witty": "1", "upbeat": 2, "interesting": 3}, 2),  # 6/3 = 2 exactly; a numeric string counts
        ({"witty": 10, "upbeat": 10, "interesting": 10}, 10),
    ],
)
def test_the_mean_attribute_is_the_mean_of_the_three_rounded_half_up(ratings: dict[str, object], level: int) -> None:
    item = rate_conversation(_conversation(ratings), "mean")
    assert isinstance(item, RatedText) and item.level == level


def test_a_fractional_rating_rounds_half_up_not_to_even() -> None:
    item = rate_conversation(_conversation({"interesting": "6.5"}), "interesting")
    assert isinstance(item, RatedText) and item.level == 7  # round(6.5) would give 6


@pytest.mark.parametrize(
    "ratings",
    [None, {}, {"interesting": ""}, {"interesting": "abc"}, {"interesting": 0}, {"interesting": 11}, {"interesting": True},
     {"interesting": None}, {"interesting": "nan"}, {"witty": 5}],
)  # fmt: skip
def test_missing_or_unparseable_ratings_are_skipped(ratings: object) -> None:
    assert isinstance(rate_conversation(_conversation(ratings), "interesting"), str)


def test_mean_needs_all_three_ratings_and_a_conversation_needs_a_prompt() -> None:
    assert isinstance(rate_conversation(_conversation({"witty": 5, "upbeat": 5}), "mean"), str)
    assert rate_conversation(_conversation({"interesting": 5}, prompt=None), "interesting") == "no starter prompt"
    assert rate_conversation({"prompt": "Q", "ratings": {"interesting": 5}, "messages": []}, "interesting") == "no text"


# --------------------------------------------------------------------------- the real dataset


def test_chitchat_has_50_participants_with_20_rated_conversations() -> None:
    groups = load_chitchat("interesting")
    assert list(groups) == sorted(groups) and len(groups) == 50
    assert sum(len(items) for items in groups.values()) == 3621
    assert len(load_chitchat("interesting", min_conversations=50)) == 22
    prompts = {c.get("prompt") for _, c in _conversations()}
    levels = set()
    for name, items in groups.items():
        assert len(items) >= 20
        for item in items:
            assert item.group == name and item.question in prompts
            assert 0 < len(item.text) <= 1000 and item.text == item.text.strip()
            levels.add(item.level)
    assert levels == set(range(1, LEVELS + 1))
    # items in conversation-id order: the first group's items are its conversations in sorted-id order
    first = next(iter(groups))
    expected = [
        r for _, c in _conversations() if isinstance(r := rate_conversation(c, "interesting"), RatedText) and r.group == first
    ]
    assert groups[first] == expected


def test_chitchat_skips_exactly_the_unrated_and_promptless_conversations() -> None:
    assert skipped_conversations("mean") == {"no ratings": 1180, "no starter prompt": 2}
    assert skipped_conversations("mean", min_turns=2) == {"no ratings": 1180, "no starter prompt": 2, "fewer than 2 turns": 2284}
    two_turns = load_chitchat("mean", min_turns=2)
    assert len(two_turns) == 34 and sum(len(items) for items in two_turns.values()) == 1827
    everything = load_chitchat("mean", min_conversations=1)
    assert all(set(items) <= set(everything[name]) for name, items in two_turns.items())


def test_chitchat_cuts_texts_to_max_chars() -> None:
    groups = load_chitchat("witty", max_chars=40)
    assert all(0 < len(item.text) <= 40 for items in groups.values() for item in items)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attribute": "funny"}, "unknown rating attribute 'funny': choose one of witty, upbeat, interesting, mean"),
        ({"min_conversations": 0}, "min_conversations must be at least 1"),
        ({"min_conversations": 100_000}, "no participant has 100000 rated conversations"),
        ({"min_turns": 0}, "min_turns must be at least 1"),
    ],
)
def test_load_chitchat_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_chitchat(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- split_groups


def _toy_groups(sizes: list[int]) -> dict[str, list[RatedText]]:
    return {
        f"g{g}": [RatedText(f"text {g}.{i}", 1 + i % LEVELS, f"q{i % 3}", f"g{g}") for i in range(n)] for g, n in enumerate(sizes)
    }


def test_split_is_disjoint_complete_and_sized_by_test_fraction() -> None:
    groups = _toy_groups([2, 3, 10, 20, 41, 5])
    split = split_groups(groups, unseen_groups=2, test_fraction=0.25, seed=0)
    assert len(split.unseen) == 2 and set(split.train) == set(split.test) and len(split.train) == 4
    assert not set(split.unseen) & set(split.train)
    for name in split.train:
        n = len(groups[name])
        train, test = split.train[name], split.test[name]
        # round(0.25 n) clipped to [1, n - 1]: 2 -> round(0.5) = 0 -> 1; 10 -> round(2.5) = 2 (Python rounds half to even); 41 -> 10
        assert len(test) == {2: 1, 3: 1, 5: 1, 10: 2, 20: 5, 41: 10}[n]
        assert sorted(train + test, key=groups[name].index) == groups[name]  # complete, disjoint, nothing repeated
        assert train == sorted(train, key=groups[name].index) and test == sorted(test, key=groups[name].index)  # order kept
    for name, items in split.unseen.items():
        assert items == groups[name]


def test_split_is_deterministic_in_the_seed() -> None:
    groups = load_chitchat("interesting")
    a = split_groups(groups, unseen_groups=10, test_fraction=0.25, seed=0)
    b = split_groups(groups, unseen_groups=10, test_fraction=0.25, seed=0)
    assert a == b
    c = split_groups(groups, unseen_groups=10, test_fraction=0.25, seed=1)
    assert set(c.unseen) != set(a.unseen)
    assert (
        sum(len(v) for v in a.train.values()) + sum(len(v) for v in a.test.values()) + sum(len(v) for v in a.unseen.values())
        == 3621
    )


def test_holding_out_more_groups_moves_no_other_groups_items() -> None:
    groups = _toy_groups([10] * 8)
    few = split_groups(groups, unseen_groups=1, test_fraction=0.3, seed=3)
    many = split_groups(groups, unseen_groups=4, test_fraction=0.3, seed=3)
    for name in many.train:
        assert many.test[name] == few.test[name]
    assert split_groups(groups, unseen_groups=0, test_fraction=0.3, seed=3).unseen == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unseen_groups": 3}, r"unseen_groups must be in \[0, 2\] \(there are 3 groups\), got 3"),
        ({"unseen_groups": -1}, r"unseen_groups must be in \[0, 2\]"),
        ({"test_fraction": 0.0}, "test_fraction must lie strictly between 0 and 1, got 0.0"),
        ({"test_fraction": 1.0}, "test_fraction must lie strictly between 0 and 1"),
    ],
)
def test_split_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {"unseen_groups": 1, "test_fraction": 0.25} | kwargs
    with pytest.raises(ValueError, match=message):
        split_groups(_toy_groups([4, 4, 4]), seed=0, **args)  # type: ignore[arg-type]


def test_a_seen_group_needs_two_items() -> None:
    with pytest.raises(ValueError, match="group 'g0' has 1 item"):
        split_groups(_toy_groups([1, 4]), unseen_groups=0, test_fraction=0.5, seed=0)


# --------------------------------------------------------------------------- embeddings


def test_embeddings_are_unit_norm_and_a_second_call_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = minilm.embed

    def counting(texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        calls.append(len(texts))
        return real(texts, device)

    monkeypatch.setattr(minilm, "embed", counting)
    texts = ["I love pizza.", "The weather is awful today.", "Tell me a joke!"]
    first = embed_texts(texts, cache_dir=tmp_path, progress=False)  # [3, 384]
    assert first.shape == (3, EMBEDDING_DIM) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=1), torch.ones(3), atol=1e-5)
    assert calls == [3] and len(list(tmp_path.glob("*.safetensors"))) == 1
    second = embed_texts(texts, cache_dir=tmp_path, progress=False)
    assert calls == [3] and torch.equal(first, second)
    embed_texts(texts[::-1], cache_dir=tmp_path, progress=False)  # other texts (here: another order), another file
    assert calls == [3, 3] and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_embeddings_go_in_chunks_and_a_broken_cache_file_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        calls.append(len(texts))
        rows = torch.tensor([[float(len(t))] + [1.0] * (EMBEDDING_DIM - 1) for t in texts])  # [n, 384]
        return rows / rows.norm(dim=1, keepdim=True)

    monkeypatch.setattr(minilm, "embed", fake)
    monkeypatch.setattr(embeddings, "CHUNK", 2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = embed_texts(texts, cache_dir=tmp_path, progress=False)
    assert calls == [2, 2, 1] and torch.equal(vectors, fake(texts))
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(embed_texts(texts, cache_dir=tmp_path, progress=False), vectors)
    assert calls == [2, 2, 1, 5, 2, 2, 1]  # the 5 is the fake(texts) above; then recomputed in chunks
    assert embed_texts([], cache_dir=tmp_path).shape == (0, EMBEDDING_DIM)


def test_the_validation_view_never_holds_a_test_item() -> None:
    groups = load_chitchat("interesting", min_turns=2)
    split = split_groups(groups, unseen_groups=10, test_fraction=0.25, seed=0)
    view = validation_split(split, fraction=0.25, seed=0)
    assert view.unseen == {} and set(view.train) == set(view.test) == set(split.train)
    for name in split.train:
        # the view's train and validation items partition the split's training items, in order
        assert sorted(view.train[name] + view.test[name], key=repr) == sorted(split.train[name], key=repr)
        assert not set(map(id, view.train[name] + view.test[name])) & set(map(id, split.test[name]))
        assert len(view.test[name]) == min(max(round(0.25 * len(split.train[name])), 1), len(split.train[name]) - 1)
    assert validation_split(split, fraction=0.25, seed=0) == view
    assert validation_split(split, fraction=0.25, seed=1) != view
