"""Batched sampling with a KV cache, and per-token log-probabilities of the sampled completions.

Sampling (docs/design.md section 2.1): the B prompts are prefilled once, their KV cache is
repeated G times (the G samples of a prompt share its prefix), then all S = B * G sequences decode
together, one token per forward, under `torch.inference_mode()`. Randomness comes only from the
`torch.Generator` passed in, so a rollout is a pure function of (adapter, prompts, generator seed).

Two samplers (`rollout.sampler`):
- `plain`, the reference: the peft model as it is (LoRA computed beside each frozen layer), a
  `DynamicCache` that grows by concatenation, transformers' mask built at every step.
- `fast` (default): the same computation with less work per token. The LoRA delta is merged into
  the frozen weights for the duration of the rollout (W + s B A, restored bit for bit afterwards),
  the KV cache is preallocated for P + T positions (`StaticCache`, filled in place), and the 4-D
  attention mask is preallocated and opened one column per step instead of being rebuilt.
  Same tokens as `plain` for the same generator, up to float rounding of the merged weights.

Rollout precision (`rollout.precision`): `model` samples with the model's own weights; `int8`
samples from a copy whose linear layers (LoRA merged in) are int8 per-output-channel weights with
dynamically quantized activations (`torch.ao` dynamic quantization, CPU only). The int8 policy mu
is not pi_theta: the rollout then carries the sampler's log-probs log mu(y_t), and the policy
gradient uses rho = pi_theta / mu as its importance ratio from the first epoch on (clipped as in
PPO), so the loss still estimates the gradient at pi_theta (docs/performance.md). The same holds
with `model.compute_dtype = bfloat16`: the sampler draws from the model's bfloat16 logits, while
`firm.logprobs` computes pi_theta with a float32 head, so the rollout carries log mu there too.

The sampled ids are cloned out of inference mode so that the training forward can save them for
backward (inference tensors cannot be saved).

Log-probabilities of the sampled completions are `firm.logprobs`'.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache

from firm.policy import Policy

SamplerKind = Literal["fast", "plain"]
Precision = Literal["model", "int8"]


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
    behaviour_logprobs: torch.Tensor | None = None  # [S, T] log mu(y_t) when the sampler is not pi_theta (int8)

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[1] - self.completion_mask.shape[1])

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def samples_per_prompt(self) -> int:
        return self.num_sequences // max(len(self.prompts), 1)


def _eos_ids(policy: Policy) -> list[int]:
    ids = {policy.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    """The peft LoRA Linear layers of `model` (those `merged_lora` can fold)."""
    from peft.tuners.lora import Linear as LoraLinear

    return [m for m in model.modules() if isinstance(m, LoraLinear)]


@contextlib.contextmanager
def merged_lora(policy: Policy) -> Iterator[None]:
    """Fold the active LoRA delta into each frozen weight (W + s B A) inside this context.

    The original weight tensors are put back untouched on exit (no W + D - D rounding), so the
    reference model pi_ref stays bit-identical. Inside `policy.reference()` (adapter disabled)
    there is nothing to fold and the model runs as is.
    """
    saved: list[tuple[Any, torch.Tensor, list[str]]] = []
    try:
        with torch.no_grad():
            for layer in _lora_layers(policy.model):
                if layer.disable_adapters or layer.merged:
                    continue
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if not active:
                    continue
                weight = layer.base_layer.weight
                delta = sum(layer.get_delta_weight(a) for a in active)
                saved.append((layer, weight.data, list(layer.merged_adapters)))
                weight.data = weight.data + delta.to(weight.dtype)
                layer.merged_adapters = active
        yield
    finally:
        for layer, data, merged in saved:
            layer.base_layer.weight.data = data
            layer.merged_adapters = merged


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module:
    """A dynamically quantized linear layer: int8 weights, one symmetric scale per output channel."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    w = weight.detach().float().cpu()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    qweight = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
    layer = DynamicInt8Linear(w.shape[1], w.shape[0], bias_=bias is not None, dtype=torch.qint8)
    layer.set_weight_bias(qweight, None if bias is None else bias.detach().float().cpu())
    return layer


class Int8Sampler:
    """A CPU copy of the policy for rollouts only: every nn.Linear int8, LoRA merged in.

    Built once per policy (the frozen layers are quantized once); before each rollout `refresh`
    re-quantizes only the LoRA-targeted layers from the live merged weights W + s B A (or from W
    alone inside `policy.reference()`).
    """

    def __init__(self, policy: Policy) -> None:
        if policy.device.type != "cpu":
            raise ValueError(
                f"rollout.precision = 'int8' uses torch's dynamic int8 kernels, which run on the CPU only "
                f"(the policy is on {policy.device}); use rollout.precision = 'model'"
            )
        # a plain float32 transformers model (the dynamic int8 kernels take float32 activations)
        plain = copy.deepcopy(policy.model).float().merge_and_unload()
        plain.eval()
        self.lora_names: dict[str, Any] = {}
        prefix = "base_model.model."
        lora = {id(layer) for layer in _lora_layers(policy.model)}
        for name, module in policy.model.named_modules():
            if id(module) in lora:
                self.lora_names[name.removeprefix(prefix)] = module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            for name, module in list(plain.named_modules()):
                if isinstance(module, torch.nn.Linear):
                    _set_module(plain, name, _int8_linear(module.weight, module.bias))
        self.model = plain

    def refresh(self) -> None:
        """Re-quantize the LoRA-targeted layers from the live policy's current (merged) weights."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, layer in self.lora_names.items():
                weight = layer.base_layer.weight
                if not layer.disable_adapters:
                    active = [a for a in layer.active_adapters if a in layer.lora_A]
                    weight = weight + sum(layer.get_delta_weight(a) for a in active) if active else weight
                _set_module(self.model, name, _int8_linear(weight, layer.base_layer.bias))


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


_INT8_SAMPLERS: weakref.WeakKeyDictionary[torch.nn.Module, Int8Sampler] = weakref.WeakKeyDictionary()


def int8_sampler(policy: Policy) -> Int8Sampler:
    """The policy's int8 rollout copy (built on first use, then refreshed per rollout)."""
    sampler = _INT8_SAMPLERS.get(policy.model)
    if sampler is None:
        sampler = _INT8_SAMPLERS[policy.model] = Int8Sampler(policy)
    sampler.refresh()
    return sampler


def sample(
    policy: Policy,
    prompts: list[str],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    *,
    sampler: SamplerKind = "fast",
    precision: Precision = "model",
) -> Rollout:
    """Sample `samples_per_prompt` completions for each prompt with the current adapter.

    `sampler` and `precision` choose how (module docstring); with precision `int8` the rollout
    carries the sampler's log-probs (`behaviour_logprobs`) for the importance ratio.
    """
    if sampler not in ("fast", "plain"):
        raise ValueError(f"rollout sampler {sampler!r}; allowed: fast, plain")
    if precision not in ("model", "int8"):
        raise ValueError(f"rollout precision {precision!r}; allowed: model, int8")
    if precision == "int8" and sampler == "plain":
        raise ValueError("rollout.precision = 'int8' needs rollout.sampler = 'fast'")
    tok, device = policy.tokenizer, policy.device
    texts = [policy.format_prompt(p) for p in prompts]
    # A chat template already writes the special tokens; raw prompts get the tokenizer's own (e.g. BOS).
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
    prompt_ids = enc["input_ids"].to(device)  # [B, P]
    prompt_mask = enc["attention_mask"].to(device)  # [B, P]
    eos = torch.tensor(_eos_ids(policy), device=device)
    state = _Sampler(len(prompts) * samples_per_prompt, temperature, generator, eos, tok.pad_token_id)
    args = (prompt_ids, prompt_mask, samples_per_prompt, max_new_tokens, state)
    with torch.inference_mode():
        if sampler == "plain":
            completion, alive, chosen = _decode_dynamic(policy.model, *args)
        elif precision == "int8":
            completion, alive, chosen = _decode_static(int8_sampler(policy).model, *args)
        else:
            with merged_lora(policy):
                completion, alive, chosen = _decode_static(policy.model, *args)
    # The sampler is not exactly pi_theta when it is int8, or when the model's logits are bfloat16
    # (firm.logprobs computes pi_theta with a float32 head): carry log mu for the importance ratio.
    off_policy = precision == "int8" or policy.precision.dtype != torch.float32
    behaviour = chosen if off_policy else None

    # Clone outside inference mode: the results are normal tensors that autograd may save.
    completion, completion_mask = completion.clone(), alive.float().clone()
    behaviour = None if behaviour is None else behaviour.clone().to(device) * completion_mask
    prompt_rep = prompt_ids.clone().repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask_rep = prompt_mask.clone().repeat_interleave(samples_per_prompt, dim=0)
    input_ids = torch.cat([prompt_rep, completion], dim=1)
    attention_mask = torch.cat([prompt_mask_rep, completion_mask.long()], dim=1)
    ids_list = [row[m.bool()].tolist() for row, m in zip(completion.cpu(), completion_mask.cpu(), strict=True)]
    num_seq = len(prompts) * samples_per_prompt
    return Rollout(
        prompts=list(prompts),
        group=[i // samples_per_prompt for i in range(num_seq)],
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        completions=tok.batch_decode(ids_list, skip_special_tokens=True),
        completion_ids=ids_list,
        behaviour_logprobs=behaviour,
    )


class _Sampler:
    """Per-token sampling state shared by both decoders: draw, pad finished rows, stop when all ended."""

    def __init__(self, num_seq: int, temperature: float, generator: torch.Generator, eos: torch.Tensor, pad_id: int) -> None:
        self.temperature, self.generator, self.eos, self.pad_id = temperature, generator, eos, pad_id
        self.finished = torch.zeros(num_seq, dtype=torch.bool, device=eos.device)
        self.tokens: list[torch.Tensor] = []
        self.alive: list[torch.Tensor] = []
        self.chosen: list[torch.Tensor] = []

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per sequence from softmax(logits / tau); returns the ids [S] (pad once finished)."""
        probs = F.softmax(logits.float() / self.temperature, dim=-1)  # [S, V]
        token = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)  # [S]
        self.chosen.append(probs.gather(-1, token[:, None]).squeeze(-1).clamp(min=1e-38).log())
        token = torch.where(self.finished, torch.full_like(token, self.pad_id), token)
        self.tokens.append(token)
        self.alive.append(~self.finished)
        self.finished = self.finished | torch.isin(token, self.eos)
        return token

    def done(self) -> bool:
        return bool(self.finished.all())  # sync point: one bool per decoded token

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """completion ids [S, T], alive mask [S, T] bool, log-prob of each drawn token [S, T]."""
        return torch.stack(self.tokens, dim=1), torch.stack(self.alive, dim=1), torch.stack(self.chosen, dim=1)


def cache_arg(model: Any, cache: Any) -> dict[str, Any]:
    """`model(..., **cache_arg(model, cache))` hands the KV cache over under the name `model`'s forward takes.

    Recent transformers 5 releases (5.24 here) call it `cache` and warn (FutureWarning, at every
    call) on the old name `past_key_values`, which goes in 5.40; releases before the rename know only
    the old name. A peft model passes it through to its base model's forward.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    return {name: cache}


def _prefill(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the B prompts once into `cache`; returns (last-position logits [B, V], positions [B, P])."""
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **cache_arg(model, cache),
    )
    return out.logits[:, -1], positions


def _decode_dynamic(
    model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: int, max_new_tokens: int, sampler: _Sampler
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference decoder: a growing DynamicCache and transformers' own mask at every step."""
    cache = DynamicCache(config=model.config)
    logits, positions = _prefill(model, prompt_ids, prompt_mask, cache)
    cache.batch_repeat_interleave(group)
    logits = logits.repeat_interleave(group, dim=0)  # [S, V]
    mask = prompt_mask.repeat_interleave(group, dim=0)  # [S, P]
    next_pos = positions[:, -1:].repeat_interleave(group, dim=0) + 1  # [S, 1]
    kv = cache_arg(model, cache)
    for step in range(max_new_tokens):
        token = sampler.draw(logits)
        if step == max_new_tokens - 1 or sampler.done():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **kv)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return sampler.result()


def _decode_static(
    model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: int, max_new_tokens: int, sampler: _Sampler
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast decoder: the prefix KV written once (repeated G times) into a cache preallocated for
    P + T positions, and a preallocated 4-D mask opened one column per step."""
    prefix = DynamicCache(config=model.config)
    logits, positions = _prefill(model, prompt_ids, prompt_mask, prefix)
    num_prompts, prompt_len = prompt_ids.shape
    num_seq, total = num_prompts * group, prompt_len + max_new_tokens
    cache = StaticCache(config=model.config, max_cache_len=total)
    for layer, past in zip(cache.layers, prefix.layers, strict=True):
        keys, values = past.keys, past.values  # type: ignore[union-attr]
        layer.update(keys.repeat_interleave(group, dim=0), values.repeat_interleave(group, dim=0))  # type: ignore[union-attr]
    del prefix
    # mask[s, 0, 0, j]: may position j be attended to (True = yes); columns open as tokens are written.
    mask = torch.zeros(num_seq, 1, 1, total, dtype=torch.bool, device=prompt_ids.device)
    mask[:, 0, 0, :prompt_len] = prompt_mask.repeat_interleave(group, dim=0).bool()
    logits = logits.repeat_interleave(group, dim=0)  # [S, V]
    next_pos = positions[:, -1:].repeat_interleave(group, dim=0) + 1  # [S, 1]
    kv = cache_arg(model, cache)
    for step in range(max_new_tokens):
        token = sampler.draw(logits)
        if step == max_new_tokens - 1 or sampler.done():
            break
        mask[:, 0, 0, prompt_len + step] = True
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **kv)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return sampler.result()
