"""Prompts and their split into client shards and a held-out evaluation set.

The built-in prompt set is small, everyday requests written for this project, enough to train and
test end to end without downloads. A JSONL file of `{"prompt": "..."}` objects (one per line,
other fields ignored) is the format for users' own prompts. Richer sources (chatterbot, chitchat,
provocative requests) and non-IID partitioners come with the real-default work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN_PROMPTS: tuple[str, ...] = (
    "How was your day today?",
    "What do you think about the weather this week?",
    "Tell me about your favourite book.",
    "Can you describe a good breakfast?",
    "What should I do this weekend?",
    "How do I make a cup of tea?",
    "Give me advice for my first day at a new job.",
    "What is a nice gift for a friend?",
    "Describe the city you would like to visit.",
    "How can I sleep better at night?",
    "What do you think of rainy days?",
    "Tell me something about the ocean.",
    "How do I start learning to play the guitar?",
    "What is the best way to spend a quiet evening?",
    "Write a short note to a neighbour.",
    "What do you think about cats and dogs?",
    "How should I prepare for an exam?",
    "Describe your perfect holiday.",
    "What makes a good friend?",
    "How do I keep plants alive in winter?",
    "Tell me about a hobby you enjoy.",
    "What is your opinion of modern music?",
    "How can I be more productive at work?",
    "Describe a walk in the park.",
    "What should I cook for dinner tonight?",
    "How do I apologise to a colleague?",
    "Tell me about the mountains in spring.",
    "What do you think about learning a new language?",
    "How can I save money each month?",
    "Describe the sound of the sea.",
    "What is a good way to start the morning?",
    "How do I write a thank you letter?",
    "Tell me about your favourite season.",
    "What do you think of long train journeys?",
    "How can I help a friend who feels sad?",
    "Describe a busy market on a Saturday.",
    "What is the best thing about summer?",
    "How do I plan a small birthday party?",
    "Tell me about a famous painting.",
    "What do you think about working from home?",
    "How should I answer a difficult email?",
    "Describe a cosy room on a cold night.",
    "What is a fun game for children?",
    "How do I stay calm before a speech?",
    "Tell me about the stars at night.",
    "What do you think of the news today?",
    "How can I make my garden look nice?",
    "Describe your ideal weekend morning.",
    "What is a healthy lunch idea?",
    "How do I tell my boss I need a break?",
    "Tell me about an old movie you like.",
    "What do you think about getting up early?",
    "How can I be kinder to myself?",
    "Describe a storm over the hills.",
    "What is good about living in a small town?",
    "How do I fix a slow computer?",
    "Tell me about a trip to the beach.",
    "What do you think about social media?",
    "How can I meet new people in a new city?",
    "Describe the taste of fresh bread.",
    "What is a good book for a long flight?",
    "How do I handle a noisy neighbour?",
    "Tell me about your favourite animal.",
    "What do you think of winter holidays?",
)


@dataclass(frozen=True)
class Prompt:
    """One prompt; `reference` is an optional reference answer some objectives use."""

    text: str
    reference: str | None = None


@dataclass(frozen=True)
class FederatedPrompts:
    """Client shards of training prompts and a held-out evaluation set that no client trains on."""

    clients: tuple[tuple[Prompt, ...], ...]
    eval: tuple[Prompt, ...]


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file and line."""


def load_prompts(source: str) -> list[Prompt]:
    """`builtin`, or a JSONL file with one {"prompt": str, "reference": str (optional)} object per line."""
    if source == "builtin":
        return [Prompt(text) for text in BUILTIN_PROMPTS]
    path = Path(source)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    prompts: list[Prompt] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise PromptFileError(f'{path}:{lineno}: expected an object with a non-empty string "prompt"')
        reference = obj.get("reference")
        prompts.append(Prompt(obj["prompt"], reference if isinstance(reference, str) else None))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    return prompts


def split_prompts(prompts: list[Prompt], num_clients: int, num_eval: int, seed: int) -> FederatedPrompts:
    """Shuffle with `seed`, hold out `num_eval` prompts for evaluation, deal the rest IID to clients."""
    if len(prompts) < num_eval + num_clients:
        raise ValueError(f"{len(prompts)} prompts are too few for {num_eval} held-out prompts and {num_clients} clients")
    order = np.random.default_rng([seed, 0xDA7A]).permutation(len(prompts))
    shuffled = [prompts[i] for i in order]
    held_out, train = shuffled[:num_eval], shuffled[num_eval:]
    shards = tuple(tuple(train[c::num_clients]) for c in range(num_clients))
    return FederatedPrompts(clients=shards, eval=tuple(held_out))
