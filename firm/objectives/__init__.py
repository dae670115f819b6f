"""Objectives: reward functions r_m(prompt, completion) -> float, scored in batches.

Add an objective in three steps:
1. write `def <name>(prompts, completions, **kwargs) -> list[float]` in `<name>.py`, one float per completion;
2. import it below and add `"<name>": <name>` to `REGISTRY`: `objectives.names` then accepts it (no base class needed);
3. test it on hand-written completions in tests/test_objectives.py and add its row to the README's objectives table.

An objective is any callable with the TRL reward-function signature

    def reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]

returning one float per completion. Keyword arguments firm passes (accept `**kwargs` and ignore
what you do not need):

- `completion_ids`: list[list[int]], the sampled token ids of each completion;
- `group`: list[int], the index of the prompt each completion was sampled for (the G samples of
  one prompt share a group), for objectives defined across a prompt's samples;
- `ref_logprobs`: list[list[float]], the reference model's log-prob of each completion token
  (needed by `coherence`);
- `reference`: list[str | None], a reference answer per completion where the data has one
  (used by `helpfulness`);
- `device`: torch.device, the device of the run's policy (`model.device`). Objectives that run a
  model of their own put it there (the built-in ones default to the CPU when called without it),
  so `model.device=cpu` keeps every scorer off a GPU that happens to exist.

No base class: a plain function is an objective. `REGISTRY` (a plain dict) maps the built-in
names; `hf:<model id or path>` is a Hugging Face sequence-classification reward model
(`hf_classifier.py`); `learned:<path>` a preference predictor from `firm reward train` (`learned.py`;
an objective with a `for_client(i)` method gives each client its own version: `bind_client`); `module:function` in the config imports a user's function. Objectives that
need a model load it on first call (once per process), so importing this package loads none.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, Protocol

import torch

from firm.config import Config, ConfigError
from firm.objectives.coherence import coherence
from firm.objectives.compliance import compliance
from firm.objectives.conciseness import conciseness
from firm.objectives.diversity import diversity
from firm.objectives.harmlessness import harmlessness
from firm.objectives.helpfulness import helpfulness
from firm.objectives.hf_classifier import hf_reward
from firm.objectives.humor import humor
from firm.objectives.positiveness import positiveness
from firm.objectives.readability import readability

LEARNED = "learned:"


class Objective(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> Sequence[float]: ...


REGISTRY: dict[str, Objective] = {
    "positiveness": positiveness,
    "conciseness": conciseness,
    "diversity": diversity,
    "harmlessness": harmlessness,
    "helpfulness": helpfulness,
    "readability": readability,
    "humor": humor,
    "coherence": coherence,
    "compliance": compliance,
}


class ObjectiveError(RuntimeError):
    """An objective returned something unusable (wrong count, NaN, not numbers)."""


def resolve_objective(name: str) -> Objective:
    """A registered name, `hf:<model id or path>`, or `module:function` imported from the Python path."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(LEARNED):
        from firm.objectives.learned import learned_reward

        return learned_reward(name)
    if name.startswith("hf:"):
        if not name[3:]:
            raise KeyError("objective 'hf:' needs a model id or path, e.g. hf:OpenAssistant/reward-model-deberta-v3-large-v2")
        return hf_reward(name[3:])
    if ":" not in name:
        raise KeyError(f"unknown objective {name!r}; allowed: {', '.join(sorted(REGISTRY))}, hf:<model> or module:function")
    module_name, func_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KeyError(f"objective {name!r}: cannot import module {module_name!r} ({err})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise KeyError(f"objective {name!r}: module {module_name!r} has no callable {func_name!r}")
    objective: Objective = func
    return objective


def display_name(name: str, width: int = 16) -> str:
    """A short label for progress bars: `learned:<path>[@sel]` shows as `learned:<run>[@sel]` (the reward run's
    directory, the parent of `model/`), uncut; any other name longer than `width` is cut to it, ending in `~`."""
    if name.startswith(LEARNED):
        body = name[len(LEARNED) :]
        path, selector = body.rpartition("@")[::2] if "@" in PurePath(body).name else (body, "")
        parts = PurePath(path).parts
        run = parts[-2] if len(parts) >= 2 and parts[-1] == "model" else (parts[-1] if parts else "")
        return f"{LEARNED}{run}" + (f"@{selector}" if selector else "")
    return name if len(name) <= width else name[: width - 1] + "~"


def bind_client(objectives: Sequence[tuple[str, Objective]], client_id: int) -> list[tuple[str, Objective]]:
    """Client `client_id`'s objectives: each that has a `for_client(i)` method (a per-site reward, e.g.
    `learned:<path>@clients`) replaced by its result, the others unchanged."""
    bound: list[tuple[str, Objective]] = []
    for name, fn in objectives:
        for_client = getattr(fn, "for_client", None)
        bound.append((name, for_client(client_id) if callable(for_client) else fn))
    return bound


def score(
    objectives: Sequence[tuple[str, Objective]],
    prompts: list[str],
    completions: list[str],
    *,
    device: torch.device,
    **kwargs: Any,
) -> torch.Tensor:
    """Score every completion with every objective; `device` (the policy's) and `kwargs` are passed to each.

    Returns:
        rewards  # [S, M] float32, S = len(completions), column m = objective m
    """
    columns = []
    for name, fn in objectives:
        values = list(fn(prompts, completions, device=device, **kwargs))
        if len(values) != len(completions):
            raise ObjectiveError(f"objective {name!r} returned {len(values)} rewards for {len(completions)} completions")
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ObjectiveError(f"objective {name!r} returned a value that is not a number") from None
        if not all(math.isfinite(v) for v in floats):
            raise ObjectiveError(f"objective {name!r} returned NaN or Inf")
        columns.append(floats)
    return torch.tensor(columns, dtype=torch.float32).T.contiguous()


__all__ = ["REGISTRY", "Objective", "ObjectiveError", "bind_client", "resolve_objective", "score"]


def validate_config(config: Config) -> None:
    """The objectives.* checks: names known (or `hf:<model>`, or a `module:function` that resolves), no
    duplicates, and a preference with one non-negative weight per objective, not all zero."""
    names = config.objectives.names
    if not names:
        raise ConfigError("objectives.names: at least one objective is required")
    for i, name in enumerate(names):
        if name == "hf:":
            raise ConfigError(
                f"objectives.names[{i}]: 'hf:' needs a model id or path, e.g. hf:OpenAssistant/reward-model-deberta-v3-large-v2"
            )
        if name.startswith(LEARNED):
            from firm.objectives.learned import check
            from firm.rewards.model_dir import LearnedModelError

            try:
                check(name)
            except LearnedModelError as err:
                raise ConfigError(f"objectives.names[{i}]: {err}") from None
            continue
        if name not in REGISTRY and not name.startswith("hf:") and ":" not in name:
            raise ConfigError(
                f"objectives.names[{i}]: unknown objective {name!r}; allowed: {', '.join(sorted(REGISTRY))}, hf:<model id or path> or module:function"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives.names: duplicate objective in {list(names)}")
    pref = config.objectives.preference
    if pref:
        if len(pref) != len(names):
            raise ConfigError(
                f"objectives.preference: has {len(pref)} values but objectives.names has {len(names)}; give one weight per objective"
            )
        if any(v < 0 for v in pref):
            raise ConfigError(f"objectives.preference: weights must be >= 0, got {list(pref)}")
        if sum(pref) <= 0:
            raise ConfigError(f"objectives.preference: weights must not all be zero, got {list(pref)}")
    for i, name in enumerate(names):
        if ":" in name and not name.startswith(("hf:", LEARNED)) and name not in REGISTRY:
            try:
                resolve_objective(name)
            except KeyError as err:
                raise ConfigError(f"objectives.names[{i}]: {err.args[0]}") from None
