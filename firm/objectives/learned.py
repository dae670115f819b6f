"""`learned:<path>`: a preference predictor trained by `firm reward train` (firm.rewards) as an objective.

    learned:<path>            the population's taste: the mean over the model's groups of each group's
                              predicted rating (the predictor conditioned on that group's context)
    learned:<path>@<group>    one group's taste: conditioned on that group's context only
    learned:<path>@clients    each FIRM client scores with its own group's taste (client i -> the i-th
                              group of the model, by sorted name, modulo their number); held-out
                              evaluation, which belongs to no client, uses the population's

reward = (E[rating] - 1) / (K - 1) in [0, 1], E over the predicted rating distribution
(firm.rewards.predictor.score01). The text scored is the prompt and the reply, one per line, as a
two-turn conversation, embedded with the MiniLM model the predictor was trained on
(firm.objectives.minilm). Deviation: the predictor learned from ratings of whole human-human
chats; a model's single reply to an opener is out of that distribution, so the learned reward
says how a group would rate this exchange as a conversation, not a calibrated rating.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from firm.objectives.minilm import embed
from firm.rewards.embeddings import EMBEDDING_DIM, EMBEDDING_MODEL
from firm.rewards.model_dir import LearnedModel, LearnedModelError, load_model
from firm.rewards.predictor import score01

PREFIX = "learned:"


def parse(name: str) -> tuple[Path, str]:
    """`learned:<path>[@<group>|@clients]` -> (path, selector); selector "" is the population."""
    body = name[len(PREFIX) :]
    if not body:
        raise LearnedModelError("objective 'learned:' needs a model path, e.g. learned:runs/<reward run>/model")
    path, _, selector = body.rpartition("@") if "@" in Path(body).name else (body, "", "")
    return Path(path), selector


@functools.cache
def _load(path: str, device: str) -> LearnedModel:
    return load_model(path, embedding_model=EMBEDDING_MODEL, embedding_dim=EMBEDDING_DIM, device=device)


def check(name: str) -> None:
    """Load the model once and check the selector: a one-line LearnedModelError otherwise."""
    path, selector = parse(name)
    model = _load(str(path), "cpu")
    if selector not in ("", "clients") and selector not in model.contexts:
        raise LearnedModelError(
            f"{name}: no group {selector!r} in the model; it has {len(model.contexts)} groups, e.g. {sorted(model.contexts)[:3]}"
        )
    if not model.contexts:
        raise LearnedModelError(f"{name}: the model holds no group context to condition on")


class LearnedReward:
    """The objective callable; `for_client(i)` gives client i's own version under `@clients`."""

    def __init__(self, name: str, group: str | None = None) -> None:
        check(name)
        self.name = name
        self.path, self.selector = parse(name)
        self.group = group if group is not None else (self.selector if self.selector not in ("", "clients") else None)

    def for_client(self, client_id: int) -> LearnedReward:
        """Client `client_id`'s objective: its own group under `@clients`, else this one."""
        if self.selector != "clients":
            return self
        groups = sorted(_load(str(self.path), "cpu").contexts)
        return LearnedReward(self.name, groups[client_id % len(groups)])

    def __call__(
        self, prompts: list[str], completions: list[str], *, device: torch.device | str = "cpu", **kwargs: Any
    ) -> list[float]:
        dev = torch.device(device)
        learned = _load(str(self.path), str(dev))
        texts = [f"{p}\n{c}" for p, c in zip(prompts, completions, strict=True)]
        x = embed(texts, dev).to(dev).unsqueeze(0)  # [1, S, D]
        groups = [self.group] if self.group is not None else sorted(learned.contexts)
        total = torch.zeros(len(texts), device=dev)
        with torch.no_grad():
            for g in groups:
                cx, cy = learned.contexts[g]
                cx, cy = cx.to(dev).unsqueeze(0), cy.to(dev).unsqueeze(0)  # [1, C, D], [1, C]
                mask = torch.ones(cy.shape, dtype=torch.bool, device=dev)
                total += score01(learned.model(cx, cy, mask, x))[0]
        values = (total / len(groups)).tolist()
        return [0.0 if not c.strip() else v for c, v in zip(completions, values, strict=True)]


def learned_reward(name: str) -> LearnedReward:
    """The objective for `learned:<path>[@...]` (raises LearnedModelError on a bad model or selector)."""
    return LearnedReward(name)
