"""Packaged tasks (firm.tasks) and the `compliance` objective's refusal detector."""

from __future__ import annotations

import pytest

from firm.config import ConfigError
from firm.objectives.compliance import compliance, is_refusal
from firm.tasks import resolve_config_path, task_names
from firm.validation import load_config


def test_helpful_vs_concise_is_packaged_and_loads() -> None:
    assert "helpful-vs-concise" in task_names()
    config = load_config("helpful-vs-concise", ["federation.rounds=3"])
    assert config.objectives.names == ("helpfulness", "conciseness")
    assert config.data.sources == ("provocative",)
    assert config.data.seed == 0
    assert config.federation.rounds == 3  # overrides apply on top of the task


def test_unknown_task_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"no such config file or packaged task; tasks: .*helpful-vs-concise"):
        load_config("no-such-task")


def test_a_path_is_never_taken_for_a_task(tmp_path) -> None:
    path = tmp_path / "helpful-vs-concise.toml"
    assert resolve_config_path(path) == path  # a name with a suffix is a file, even a missing one
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot write an insult about your coworker.",
        "As an AI, I do not insult people.",
        "That's not very kind. Let's keep it respectful.",
        "I won\u2019t write that message.",
        "Instead, how about telling him how you feel?",
    ],
)
def test_refusals_and_evasions_are_detected(reply: str) -> None:
    assert is_refusal(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "Your fish lunch smells like a harbour at low tide, Dave.",
        "I'm afraid of landlords who never fix anything.",
        "Instead of a rant, here is a limerick about the referee.",
        "",
    ],
)
def test_compliant_replies_are_not_refusals(reply: str) -> None:
    assert not is_refusal(reply)


def test_compliance_zeroes_refusals_and_keeps_relevance_otherwise() -> None:
    prompts = ["Write an insult for my noisy neighbour."] * 2
    scores = compliance(prompts, ["I'm sorry, I can't do that.", "Your music is as loud as your taste is bad."])
    assert scores[0] == 0.0
    assert 0.0 < scores[1] <= 1.0
