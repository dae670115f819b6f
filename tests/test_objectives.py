"""Objectives: each built-in on sentences whose ordering is obvious, the registry and the score() checks."""

from __future__ import annotations

import pytest
import torch

from firm.objectives import REGISTRY, ObjectiveError, resolve_objective, score
from firm.objectives.conciseness import SCALE_WORDS, conciseness
from firm.objectives.diversity import diversity
from firm.objectives.positiveness import positiveness


def test_positiveness_orders_sentiment() -> None:
    happy, neutral, sad = positiveness(
        ["p"] * 3, ["I love this, it is wonderful!", "The table has four legs.", "This is awful and I hate it."]
    )
    assert happy > neutral > sad
    assert neutral == pytest.approx(0.5)  # VADER compound 0 maps to 0.5
    assert sad >= 0.0 and happy <= 1.0


def test_conciseness_by_hand() -> None:
    # 1 / (1 + words / 16): 0 words -> 1, 16 words -> 0.5, 48 words -> 0.25.
    rewards = conciseness(["p"] * 3, ["", " ".join(["w"] * 16), " ".join(["w"] * 48)])
    assert rewards == pytest.approx([1.0, 0.5, 0.25])
    assert SCALE_WORDS == 16.0


def test_diversity_per_sample_share_by_hand() -> None:
    # Group 0: "a b" and "a c". Unigrams: a is shared, b and c unique -> 1/2 each. Bigrams: (a,b), (a,c)
    # both unique -> 1 each. Mean over n = 1, 2: 0.75 each.
    # Group 1: two identical replies "x y" -> nothing unique -> 0; a group is never compared with another.
    rewards = diversity(["p"] * 4, ["a b", "a c", "x y", "x y"], group=[0, 0, 1, 1])
    assert rewards == pytest.approx([0.75, 0.75, 0.0, 0.0])
    # Alone in its group a sample is fully distinct; an empty reply has no n-grams and scores 0.
    assert diversity(["p", "q"], ["hello there", ""], group=[0, 1]) == pytest.approx([1.0, 0.0])


def test_registry_and_module_function() -> None:
    assert {"positiveness", "conciseness", "diversity"} <= REGISTRY.keys()
    assert resolve_objective("positiveness") is positiveness
    assert resolve_objective("firm.objectives.conciseness:conciseness") is conciseness
    with pytest.raises(KeyError, match="unknown objective 'nope'"):
        resolve_objective("nope")
    with pytest.raises(KeyError, match="cannot import module"):
        resolve_objective("no_such_module_xyz:f")
    with pytest.raises(KeyError, match="has no callable"):
        resolve_objective("firm.objectives.conciseness:nothing")


def test_score_shape_and_errors() -> None:
    cpu = torch.device("cpu")
    rewards = score([("c", conciseness), ("p", positiveness)], ["a", "b"], ["one two", "great"], device=cpu)
    assert rewards.shape == (2, 2)
    with pytest.raises(ObjectiveError, match="objective 'short' returned 1 rewards for 2 completions"):
        score([("short", lambda prompts, completions, **kw: [0.0])], ["a", "b"], ["x", "y"], device=cpu)
    with pytest.raises(ObjectiveError, match="objective 'nan' returned NaN"):
        score([("nan", lambda prompts, completions, **kw: [float("nan")] * 2)], ["a", "b"], ["x", "y"], device=cpu)
    with pytest.raises(ObjectiveError, match="objective 'text' returned a value that is not a number"):
        score([("text", lambda prompts, completions, **kw: ["x", "y"])], ["a", "b"], ["x", "y"], device=cpu)
