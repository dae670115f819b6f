"""Per-token log-probabilities of sampled completions under the policy (or the adapter-disabled reference).

Log-probabilities (`token_logprobs`, `algorithm.logprobs`): `plain` runs the whole [S, P + T]
batch through the model and takes log_softmax over the vocabulary at every completion position.
`fast` computes the same numbers with less work: the prompt prefix goes through the model once per
prompt (B rows, not S) and its KV cache is repeated for the G completions (autograd sums the G
gradients back into the prefix), and the LM head is a fused function of the final hidden states
that keeps, per token, only d logp / d h = (w_y - E_p[w]) / tau instead of the [S, T, V] logits
(section 9: the vocabulary is 49,152 wide), so its backward is one multiply per token for each of
the M per-objective cotangents.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from firm.policy import Policy
from firm.rollout import Rollout, cache_arg

HEAD_CHUNK_ROWS = 256
"""Token positions per chunk in the fused log-prob head (bounds the [rows, V] logits held at once)."""


LogprobMethod = Literal["fast", "plain"]


def completion_logits(policy: Policy, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Logits / temperature at the positions that predict each completion token (the whole batch through the model).

    With a bfloat16 base and a plain LM head, the head runs in float32 (`float32_head`), so the
    evaluation's exact KL is not made of bfloat16-rounded logits.

    Returns:
        logits  # [S, T, V] float32
    """
    positions = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    num_completion = rollout.completion_mask.shape[1]
    head = _plain_head(policy)
    if head is not None and head.weight.dtype != torch.float32:  # a bfloat16 base: the head in float32
        lm: Any = policy.model.get_base_model()
        hidden = lm.base_model(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state[:, -(num_completion + 1) : -1]
        return F.linear(hidden.float(), float32_head(head)) / temperature
    # logits_to_keep: only the last T + 1 positions go through the LM head.
    out = policy.model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=positions,
        logits_to_keep=num_completion + 1,
        use_cache=False,
    )
    return out.logits[:, :-1].float() / temperature


def token_logprobs(policy: Policy, rollout: Rollout, temperature: float, method: LogprobMethod = "fast") -> torch.Tensor:
    """log pi(y_t | x, y_<t) of each sampled completion token under the current model.

    `method` (`algorithm.logprobs`): `plain` = log_softmax of `completion_logits`; `fast` = shared
    prompt prefix and the fused head (module docstring), the same values to float rounding. With a
    bfloat16 base both run the head in float32 on the upcast hidden states (`float32_head`). `fast`
    falls back to `plain` for models whose LM head is not a plain frozen bias-free linear layer
    (a LoRA on the head, logit scaling or soft-capping).

    Returns:
        logprobs  # [S, T]; entries where completion_mask is 0 are arbitrary: mask them.
    """
    if method not in ("fast", "plain"):
        raise ValueError(f"log-prob method {method!r}; allowed: fast, plain")
    head = _plain_head(policy)
    if method == "plain" or head is None:
        logits = completion_logits(policy, rollout, temperature)
        completion = rollout.input_ids[:, rollout.prompt_len :]
        return torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    hidden = _completion_hidden(policy, rollout).float()  # [S, T, H]; float32 whatever the compute dtype
    completion = rollout.input_ids[:, rollout.prompt_len :]
    flat = fused_token_logprobs(hidden.reshape(-1, hidden.shape[-1]), float32_head(head), completion.reshape(-1), temperature)
    return flat.view(completion.shape)


_HEADS_F32: weakref.WeakKeyDictionary[torch.nn.Linear, torch.Tensor] = weakref.WeakKeyDictionary()


def float32_head(head: torch.nn.Linear) -> torch.Tensor:
    """The frozen LM head's weight in float32: itself for a float32 model, a cached copy for a bfloat16 one.

    With `model.compute_dtype = bfloat16` the body runs in bfloat16 but the head runs in float32 on
    the upcast hidden states, so log-probabilities (and the KL and importance ratio built on them)
    carry no bfloat16 rounding of the logits: a logit of 20 rounded to bfloat16 is off by up to 0.06.
    """
    if head.weight.dtype == torch.float32:
        return head.weight
    cached = _HEADS_F32.get(head)
    if cached is None or cached.device != head.weight.device:
        cached = _HEADS_F32[head] = head.weight.detach().float()
    return cached


def _plain_head(policy: Policy) -> torch.nn.Linear | None:
    """The LM head if the fused head computes exactly what the model does, else None."""
    lm: Any = policy.model.get_base_model()
    head = lm.get_output_embeddings()
    config = lm.config
    plain = (
        type(head) is torch.nn.Linear
        and head.bias is None
        and not head.weight.requires_grad
        and not getattr(config, "final_logit_softcapping", None)
        and getattr(config, "logit_scale", None) in (None, 1.0)
    )
    return head if plain else None


def _completion_hidden(policy: Policy, rollout: Rollout) -> torch.Tensor:
    """Final hidden states at the positions that predict each completion token, the prefix run once per prompt.

    Returns:
        hidden  # [S, T, H]: row t predicts completion token t
    """
    lm: Any = policy.model.get_base_model()
    body = lm.base_model  # the decoder stack (with the LoRA layers in it), final norm included
    group, prompt_len = rollout.samples_per_prompt, rollout.prompt_len
    prompt_ids = rollout.input_ids[::group, :prompt_len]  # [B, P]
    prompt_mask = rollout.attention_mask[::group, :prompt_len]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=lm.config)
    out = body(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, **cache_arg(body, cache))
    last = out.last_hidden_state[:, -1:].repeat_interleave(group, dim=0)  # [S, 1, H] predicts token 0
    num_completion = rollout.completion_mask.shape[1]
    if num_completion == 1:
        return last
    cache.batch_repeat_interleave(group)  # autograd sums the G completions' gradients into the prefix
    steps = torch.arange(1, num_completion, device=positions.device)
    completion_pos = positions[:, -1:].repeat_interleave(group, dim=0) + steps  # [S, T - 1]
    out = body(
        input_ids=rollout.input_ids[:, prompt_len:-1],
        attention_mask=rollout.attention_mask[:, :-1],
        position_ids=completion_pos,
        use_cache=True,
        **cache_arg(body, cache),
    )
    return torch.cat([last, out.last_hidden_state], dim=1)


class _FusedTokenLogprob(torch.autograd.Function):
    """logp[r] = log softmax(h_r W^T / tau)[y_r], saving d logp / d h_r = (w_{y_r} - E_{p_r}[w]) / tau."""

    generate_vmap_rule = True  # the backward is one multiply: vmap (is_grads_batched) maps it directly

    @staticmethod
    def forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> Any:
        return _head_chunks(hidden, weight, targets, temperature, with_grad=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        hidden = inputs[0]
        ctx.hidden_dtype = hidden.dtype
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, grad_unused: torch.Tensor) -> Any:
        (dlogp_dh,) = ctx.saved_tensors
        return (grad_logp[..., None] * dlogp_dh).to(ctx.hidden_dtype), None, None, None


def _head_chunks(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp [R], d logp / d h [R, H] or an empty tensor), HEAD_CHUNK_ROWS rows of [R, V] logits at a time."""
    rows = hidden.shape[0]
    logp = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    dlogp_dh = torch.empty((rows, hidden.shape[1]) if with_grad else (0,), dtype=torch.float32, device=hidden.device)
    for start in range(0, rows, HEAD_CHUNK_ROWS):
        h, y = hidden[start : start + HEAD_CHUNK_ROWS], targets[start : start + HEAD_CHUNK_ROWS]
        z = F.linear(h, weight).float() / temperature  # [c, V]
        lse = torch.logsumexp(z, dim=-1)
        logp[start : start + len(y)] = z.gather(-1, y[:, None]).squeeze(-1) - lse
        if with_grad:
            p = torch.exp(z - lse[:, None])  # softmax, [c, V]
            expected = (p.to(weight.dtype) @ weight).float()  # E_p[w], [c, H]
            dlogp_dh[start : start + len(y)] = (weight[y].float() - expected) / temperature
    return logp, dlogp_dh


def fused_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(hidden W^T / tau)[targets] per row, without keeping [rows, V] logits for backward.

    Args:
        hidden: [R, H] final hidden states; weight: [V, H] the frozen LM head; targets: [R] token ids.

    Returns:
        logp  # [R] float32; differentiable in `hidden` (not in `weight`)
    """
    if weight.requires_grad:
        raise ValueError("the fused log-prob head needs a frozen LM head")
    if hidden.requires_grad and torch.is_grad_enabled():
        logp, _ = _FusedTokenLogprob.apply(hidden, weight, targets, temperature)
        return logp
    return _head_chunks(hidden, weight, targets, temperature, with_grad=False)[0]
