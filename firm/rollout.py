"""Batched sampling with a KV cache, and per-token log-probabilities of the sampled completions.

Sampling (DESIGN.md section 2, step 1): the B prompts are prefilled once, the KV cache is
repeated G times (the G samples of a prompt share its prefix), then all B * G sequences decode
together, one token per forward, under `torch.inference_mode()`. Randomness comes only from the
`torch.Generator` passed in, so a rollout is a pure function of (adapter, prompts, generator seed).

The sampled ids are cloned out of inference mode so that the training forward can save them for
backward (inference tensors cannot be saved).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from firm.policy import Policy


@dataclass(frozen=True)
class Rollout:
    """B prompts x G sampled completions, flattened prompt-major to S = B * G sequences."""

    prompts: list[str]  # [B] raw prompt texts (before the chat template)
    group: list[int]  # [S] index of each sequence's prompt
    input_ids: torch.Tensor  # [S, P + T] left-padded prompt, then completion (pad after EOS)
    attention_mask: torch.Tensor  # [S, P + T]
    completion_mask: torch.Tensor  # [S, T] float, 1 on sampled tokens up to and including EOS
    completions: list[str]  # [S] decoded completions
    completion_ids: list[list[int]]  # [S] sampled ids (without padding)

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[1] - self.completion_mask.shape[1])

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])


def _eos_ids(policy: Policy) -> list[int]:
    ids = {policy.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def sample(
    policy: Policy,
    prompts: list[str],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
) -> Rollout:
    """Sample `samples_per_prompt` completions for each prompt with the current adapter."""
    tok, model, device = policy.tokenizer, policy.model, policy.device
    texts = [policy.format_prompt(p) for p in prompts]
    # A chat template already writes the special tokens; raw prompts get the tokenizer's own (e.g. BOS).
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
    eos = torch.tensor(_eos_ids(policy), device=device)
    pad_id = tok.pad_token_id
    num_seq = len(prompts) * samples_per_prompt

    with torch.inference_mode():
        prompt_ids = enc["input_ids"].to(device)  # [B, P]
        mask = enc["attention_mask"].to(device)  # [B, P]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=prompt_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(samples_per_prompt)
        logits = out.logits[:, -1].repeat_interleave(samples_per_prompt, dim=0)  # [S, V]
        mask = mask.repeat_interleave(samples_per_prompt, dim=0)  # [S, P]
        next_pos = positions[:, -1:].repeat_interleave(samples_per_prompt, dim=0) + 1  # [S, 1]
        finished = torch.zeros(num_seq, dtype=torch.bool, device=device)
        tokens, alive = [], []
        for step in range(max_new_tokens):
            probs = F.softmax(logits.float() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [S]
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            tokens.append(token)
            alive.append(~finished)
            finished = finished | torch.isin(token, eos)
            if step == max_new_tokens - 1 or bool(finished.all()):  # sync point: one bool per decoded token
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True
            )
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        completion = torch.stack(tokens, dim=1)  # [S, T]
        completion_mask = torch.stack(alive, dim=1).float()  # [S, T]

    # Clone outside inference mode: the results are normal tensors that autograd may save.
    completion, completion_mask = completion.clone(), completion_mask.clone()
    prompt_rep = prompt_ids.clone().repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask = enc["attention_mask"].to(device).repeat_interleave(samples_per_prompt, dim=0)
    input_ids = torch.cat([prompt_rep, completion], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
    ids_list = [row[m.bool()].tolist() for row, m in zip(completion.cpu(), completion_mask.cpu(), strict=True)]
    return Rollout(
        prompts=list(prompts),
        group=[i // samples_per_prompt for i in range(num_seq)],
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        completions=tok.batch_decode(ids_list, skip_special_tokens=True),
        completion_ids=ids_list,
    )


def completion_logits(policy: Policy, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Logits / temperature at the positions that predict each completion token.

    Returns:
        logits  # [S, T, V] float32
    """
    positions = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    num_completion = rollout.completion_mask.shape[1]
    # logits_to_keep: only the last T + 1 positions go through the LM head.
    out = policy.model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=positions,
        logits_to_keep=num_completion + 1,
        use_cache=False,
    )
    return out.logits[:, :-1].float() / temperature


def token_logprobs(policy: Policy, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of each sampled completion token under the current model.

    Returns:
        logprobs  # [S, T], zero-padded where completion_mask is 0 is NOT guaranteed: mask it.
    """
    logits = completion_logits(policy, rollout, temperature)
    completion = rollout.input_ids[:, rollout.prompt_len :]
    return torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
