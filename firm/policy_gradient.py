"""The per-objective policy-gradient problem of one rollout batch (docs/design.md sections 2.1-2.5).

For a batch of B prompts x G samples (S = B * G sequences, T completion tokens, N = number of
real completion tokens in the batch):

    advantages  A[s, m] = (r[s, m] - mean_g r[., m]) / (std_g r[., m] + eps)     per prompt group
    ratio       rho[s, t] = exp(logp[s, t] - logp_old[s, t])     1 on the first epoch (logp_old = the sampler's
                                                                 log mu with rollout.precision = int8)
    L_m         = -(1/N) sum_{s,t} min(rho A[s, m], clip(rho, 1 - c, 1 + c) A[s, m])    token-level
    KL          = (1/N) sum_{s,t} k3[s, t],  k3 = exp(ref - logp) - (ref - logp) - 1    (Schulman's k3)
    f_m = L_m + beta_kl KL,   g_m = df_m / dtheta                             (LoRA parameters only)

The KL term is common to all objectives (docs/design.md section 2.4) and part of each objective
f_{i,m} = -J_{i,m} (section 1), so the Gram matrix is that of the gradients of the objectives being
traded off, and the combined direction sum_m lambda_m g_m = sum_m lambda_m dL_m/dtheta +
beta_kl dKL/dtheta is section 2's step 7 for any lambda on the simplex. It costs M gradient
products, not M + 1: FIRM's extra cost over FedAvg's one backward is M - 1 products and the solve.

Every loss is a sum over tokens of a function of the per-token log-prob logp[s, t], so its
gradient is a vector-Jacobian product of the one graph logp(theta) with a cotangent written in
closed form (no second forward):

    dL_m / dlogp[s, t]  = -(1/N) A[s, m] rho[s, t]   where the unclipped branch is active, else 0
    dKL / dlogp[s, t]   =  (1/N) (1 - exp(ref[s, t] - logp[s, t]))

`objective_gradients` takes the M cotangents (objective + KL) through M backward passes of one
graph with `retain_graph` (config `algorithm.vjp = "loop"`, the reference path) or through one
vectorised backward (`is_grads_batched=True`, `"batched"`); `combined_gradient` folds the weights
into one cotangent and runs one backward. Tests check both against autograd on the explicit losses.

On the KL term: as in GRPO, the k3 estimator is minimised on samples from pi_theta without
reweighting; the expected gradient of that loss is the gradient of KL(pi_ref || pi_theta), the
reverse direction of docs/design.md section 1's KL(pi_theta || pi_ref). The two agree to second order
near the reference, which is where beta_kl keeps the policy; the logged `kl` (evaluation) is the
exact KL(pi_theta || pi_ref).

Speed (docs/performance.md): the rollout uses `rollout.sampler` / `rollout.precision`, the two
forwards use `algorithm.logprobs` (`fast`: prompt prefix once per prompt and the fused LM head of
`firm.rollout`), all equal to the plain paths to float rounding except the int8 sampler, whose
policy mu differs from pi_theta: its log-probs become logp_old, so rho = pi_theta / mu corrects
the first epoch's surrogate for sampling from mu (PPO's clipped importance ratio).

Deliberate choices: the std in the advantage is the population std over the G samples; a group
whose rewards are all equal gets advantage 0. Log-probs use the sampling temperature.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch

from firm.data import Prompt
from firm.local_step import Timer, flatten
from firm.logprobs import LogprobMethod, token_logprobs
from firm.objectives import Objective, score
from firm.policy import Policy
from firm.rollout import Precision, Rollout, SamplerKind, sample
from firm.seeding import Stream, derive_seed


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """Per-objective group-relative advantages.

    Args:
        rewards: [S, M] with S = B * G, prompt-major (the G samples of a prompt are contiguous).

    Returns:
        advantages  # [S, M]: (r - group mean) / (group std + eps), per prompt and objective
    """
    num_seq, num_obj = rewards.shape
    grouped = rewards.view(num_seq // group_size, group_size, num_obj)  # [B, G, M]
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False)
    return ((grouped - mean) / (std + eps)).view(num_seq, num_obj)


def masked_rows(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """[S, T] values -> per-sequence lists of the entries where mask is 1 (what objectives receive)."""
    values, mask = values.detach().float().cpu(), mask.bool().cpu()
    return [row[m].tolist() for row, m in zip(values, mask, strict=True)]


class PolicyGradientProblem:
    """One rollout batch on one client, with the per-objective losses of docs/design.md section 2."""

    def __init__(
        self,
        policy: Policy,
        objectives: Sequence[tuple[str, Objective]],
        prompts: Sequence[Prompt],
        samples_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        beta_kl: float,
        clip_eps: float,
        advantage_eps: float,
        generator: torch.Generator,
        vjp: Literal["loop", "batched"] = "loop",
        timer: Timer | None = None,
        sampler: SamplerKind = "fast",
        precision: Precision = "model",
        logprobs: LogprobMethod = "fast",
        dropout_seed: int | None = None,
    ) -> None:
        self.policy = policy
        # LoRA dropout masks of the k-th gradient forward (inner epoch) come from derive(dropout_seed, k)
        self.dropout_seed = dropout_seed
        self._forwards = 0
        self.temperature = temperature
        self.beta_kl = beta_kl
        self.clip_eps = clip_eps
        self.vjp = vjp
        self.logprobs: LogprobMethod = logprobs
        self.timer = timer or Timer(policy.device)
        self.params = list(policy.params.values())

        with self.timer.phase("rollout"):
            self.rollout: Rollout = sample(
                policy,
                [p.text for p in prompts],
                samples_per_prompt,
                max_new_tokens,
                temperature,
                generator,
                sampler=sampler,
                precision=precision,
            )
        device = policy.device
        with self.timer.phase("forward"), torch.no_grad(), policy.reference():
            self.ref_logprobs = token_logprobs(policy, self.rollout, temperature, logprobs)  # [S, T]
        self.mask = self.rollout.completion_mask  # [S, T]
        with self.timer.phase("scoring"):
            rewards = score(
                objectives,
                [prompts[g].text for g in self.rollout.group],
                self.rollout.completions,
                device=device,
                completion_ids=self.rollout.completion_ids,
                group=self.rollout.group,
                reference=[prompts[g].reference for g in self.rollout.group],
                ref_logprobs=masked_rows(self.ref_logprobs, self.mask),
            )  # [S, M]
        self.rewards = rewards
        self.advantages = group_advantages(rewards, samples_per_prompt, advantage_eps).to(device)  # [S, M]
        # The sampling policy's log-probs: pi_theta's own on the first epoch (ratio 1), or the int8
        # sampler's mu, so that rho = pi_theta / mu corrects for sampling from a different policy.
        self.old_logprobs: torch.Tensor | None = self.rollout.behaviour_logprobs
        self.num_tokens = self.mask.sum().clamp(min=1.0)
        self.num_samples = self.rollout.num_sequences
        self.stats: dict[str, float | list[float]] = {
            "reward": rewards.mean(dim=0).tolist(),
            "completion_tokens": float(self.mask.sum(dim=1).mean()),
        }

    def on_policy_copy(self, policy: Policy) -> PolicyGradientProblem:
        """This problem's rollout, rewards and advantages on another copy of the model (another compute
        dtype, say), its reference log-probs recomputed there: the gradients of both are then paired."""
        other = copy.copy(self)
        other.policy, other.params, other._forwards = policy, list(policy.params.values()), 0
        other.old_logprobs = self.rollout.behaviour_logprobs
        other.timer = Timer(policy.device)
        other.stats = dict(self.stats)
        with torch.no_grad(), policy.reference():
            other.ref_logprobs = token_logprobs(policy, self.rollout, self.temperature, self.logprobs)
        return other

    def _logprobs_and_cotangents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward with grad; returns logp [S, T], objective cotangents [M, S, T], KL cotangent [S, T]."""
        seed = None if self.dropout_seed is None else derive_seed(Stream.DROPOUT, self.dropout_seed, self._forwards)
        self._forwards += 1
        with self.timer.phase("forward"), self.policy.lora_dropout(seed):
            logp = token_logprobs(self.policy, self.rollout, self.temperature, self.logprobs)  # [S, T]
        if self.old_logprobs is None:
            self.old_logprobs = logp.detach()
        # Zero the log-ratios where the mask is 0 before exp: positions after EOS hold pad tokens
        # whose log-probs are arbitrary, and inf * 0 would turn the whole gradient into NaN.
        valid = self.mask.bool()
        lp = logp.detach()
        ratio = torch.exp(torch.where(valid, lp - self.old_logprobs, 0.0))  # [S, T]
        adv = self.advantages.T[:, :, None]  # [M, S, 1]
        clipped = ((adv > 0) & (ratio > 1 + self.clip_eps)) | ((adv < 0) & (ratio < 1 - self.clip_eps))  # [M, S, T]
        objective_cot = torch.where(clipped, 0.0, -adv * ratio) * self.mask / self.num_tokens  # [M, S, T]
        log_ratio_ref = torch.where(valid, self.ref_logprobs - lp, 0.0)
        kl_cot = self.beta_kl * (1.0 - torch.exp(log_ratio_ref)) * self.mask / self.num_tokens  # [S, T]
        k3 = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0
        self.stats["kl"] = float((k3 * self.mask).sum() / self.num_tokens)
        return logp, objective_cot, kl_cot

    def _vjp(self, logp: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
        """[K, S, T] cotangents -> [K, d] gradients on the LoRA parameters."""
        with self.timer.phase("backward"):
            if self.vjp == "batched":
                grads = torch.autograd.grad(logp, self.params, grad_outputs=cotangents, is_grads_batched=True)
                return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
            rows = []
            for k in range(cotangents.shape[0]):
                last = k == cotangents.shape[0] - 1
                grads = torch.autograd.grad(logp, self.params, grad_outputs=cotangents[k], retain_graph=not last)
                rows.append(flatten(list(grads)))
            return torch.stack(rows)

    def objective_gradients(self) -> torch.Tensor:
        """g [M, d]: gradients of f_m = L_m + beta_kl KL at the current adapter, from one forward and M VJPs."""
        logp, objective_cot, kl_cot = self._logprobs_and_cotangents()
        return self._vjp(logp, objective_cot + kl_cot[None])  # [M, d]

    def combined_gradient(self, weights: torch.Tensor) -> torch.Tensor:
        """[d] gradient of sum_m weights_m L_m + beta_kl KL (= sum_m weights_m g_m on the simplex), one backward."""
        logp, objective_cot, kl_cot = self._logprobs_and_cotangents()
        w = weights.to(objective_cot.dtype).to(objective_cot.device)
        cot = torch.einsum("m,mst->st", w, objective_cot) + kl_cot  # [S, T]
        with self.timer.phase("backward"):
            grads = torch.autograd.grad(logp, self.params, grad_outputs=cot)
        return flatten(list(grads))
