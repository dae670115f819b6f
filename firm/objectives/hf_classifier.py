"""`hf:<model>` objectives: any Hugging Face sequence-classification reward model, scored on (prompt, reply) pairs.

`hf_reward("OpenAssistant/reward-model-deberta-v3-large-v2")` (in a config: the objective name
`hf:OpenAssistant/reward-model-deberta-v3-large-v2`, or `hf:/path/to/saved/model`) returns an
objective that loads `AutoTokenizer` and `AutoModelForSequenceClassification` with plain
`from_pretrained` on first use (once per process and name; a hub id needs hub access or a filled
local HF cache), then scores each (prompt, completion) as a text pair, in batches of 32, truncated
to the model's maximum length (longest-first), on the run's device (the `device` firm passes):

- `num_labels == 1`: reward = the raw logit (the usual scalar reward-model head; unbounded);
- `num_labels > 1`: reward = softmax probability of the last label (by convention the
  positive / "good" class, e.g. LABEL_1 of a binary classifier).

Deviations: models that expect a chat-formatted single input (reward models built on causal LMs
with a chat template) are fed the plain text pair, not their template. A tokenizer without a pad
token pads with its end-of-sequence token.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from firm.objectives import Objective

BATCH_SIZE = 32


@functools.cache
def _load(name: str, device: torch.device) -> tuple[Any, Any, torch.device, int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(name, dtype=torch.float32)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # Tokenizers built without a model_max_length report a huge sentinel; the position table is the real limit.
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 512]
    return tokenizer, model.to(device).eval(), device, int(min(limits))


def score_pairs(name: str, prompts: list[str], completions: list[str], device: torch.device | str = "cpu") -> list[float]:
    """Reward of each (prompt, completion) pair under the classifier `name`, run on `device`."""
    tokenizer, model, device, max_length = _load(name, torch.device(device))
    rewards: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(completions), BATCH_SIZE):
            batch = tokenizer(
                prompts[start : start + BATCH_SIZE],
                completions[start : start + BATCH_SIZE],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            logits = model(**batch).logits.float()  # [b, num_labels]
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(dim=-1)[:, -1]  # [b]
            rewards.extend(values.cpu().tolist())
    return rewards


@functools.cache
def hf_reward(name: str) -> Objective:
    """The objective `hf:<name>`; the model loads on its first call."""

    def reward(prompts: list[str], completions: list[str], *, device: torch.device | str = "cpu", **kwargs: Any) -> list[float]:
        return score_pairs(name, prompts, completions, device)

    reward.__name__ = reward.__qualname__ = f"hf:{name}"
    reward.__doc__ = f"Sequence-classification reward of (prompt, completion) under {name}."
    return reward
