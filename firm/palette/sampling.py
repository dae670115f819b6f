"""Reward samples from the reference model, per client, and best-of-n decoding with the palette's lambda.

- `client_reward_samples`: each client samples completions for its own prompts from the reference
  (the base model, adapter disabled), scores them with the run's objectives and keeps the rewards
  (`firm.palette.dual.Samples`); it answers the server's statistics questions from them
  (firm.palette.federated says what those answers reveal).
  `client_samples` is one client's part, which a Flower SuperNode runs on its own
  (firm.engines.flower.palette).
- `solve_federated`: the whole "config -> palette solution" step that `firm palette` and
  `firm train palette.targets=...` share in process.
- `best_of_n`: MAP's decoding-time check of a palette without training. For each held-out prompt,
  n reference samples; keep the one with the largest combined reward sum_m lambda_m r_m
  (best-of-n), or draw one with probability ∝ exp(lambda^T r) (tilted resampling: sampling-
  importance-resampling of the tilted policy, which it approaches as n grows). Achieved values
  are the mean rewards of the kept completions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from firm.config import Config
from firm.data import Prompt
from firm.logprobs import token_logprobs
from firm.objectives import Objective, score
from firm.palette.dual import PaletteSolution, Samples, solve_palette
from firm.palette.federated import Federation
from firm.palette.targets import parse_targets
from firm.policy import Policy
from firm.policy_gradient import masked_rows
from firm.rollout import sample
from firm.seeding import Stream, numpy_rng, torch_generator

CHUNK_SEQUENCES = 32
"""Sequences sampled and scored per batch (bounds the [S, T, vocab] logits of the reference log-probs)."""


@torch.no_grad()
def reference_rewards(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: Sequence[Prompt],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
) -> np.ndarray:
    """Rewards of `samples_per_prompt` reference completions per prompt, prompt-major.

    Returns:
        rewards  # [len(prompts) * samples_per_prompt, M] float64
    """
    per_chunk = max(1, CHUNK_SEQUENCES // samples_per_prompt)
    rows: list[torch.Tensor] = []
    with policy.reference():
        for start in range(0, len(prompts), per_chunk):
            chunk = list(prompts[start : start + per_chunk])
            rollout = sample(policy, [p.text for p in chunk], samples_per_prompt, max_new_tokens, temperature, generator)
            ref_lp = token_logprobs(policy, rollout, temperature)  # [S, T]
            rows.append(
                score(
                    objectives,
                    [chunk[g].text for g in rollout.group],
                    rollout.completions,
                    device=policy.device,
                    completion_ids=rollout.completion_ids,
                    group=rollout.group,
                    reference=[chunk[g].reference for g in rollout.group],
                    ref_logprobs=masked_rows(ref_lp, rollout.completion_mask),
                )
            )  # [S, M]
    return torch.cat(rows).to(torch.float64).numpy()


def client_reward_samples(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    shards: Sequence[Sequence[Prompt]],
    config: Config,
) -> list[Samples]:
    """Each client's reward samples on `palette.prompts_per_client` of its prompts (seeded per client)."""
    drawn = (client_samples(policy, objectives, shard, client_id, config) for client_id, shard in enumerate(shards))
    return [samples for samples in drawn if samples is not None]


def client_samples(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    shard: Sequence[Prompt],
    client_id: int,
    config: Config,
) -> Samples | None:
    """One client's reward samples, seeded by its id (None for an empty shard): in process, or on its Flower SuperNode."""
    if not shard:
        return None
    pal, ro, seed = config.palette, config.rollout, config.federation.seed
    k = len(shard) if pal.prompts_per_client == 0 else min(pal.prompts_per_client, len(shard))
    picked = numpy_rng(Stream.PALETTE, seed, 0, client_id).choice(len(shard), size=k, replace=False)
    chosen = [shard[int(i)] for i in sorted(picked)]
    generator = torch_generator(policy.device, Stream.PALETTE, seed, 1, client_id)
    if config.output.progress:
        print(f"palette: client {client_id}: sampling {k} prompts x {pal.samples_per_prompt}", file=sys.stderr)
    rewards = reference_rewards(policy, objectives, chosen, pal.samples_per_prompt, ro.max_new_tokens, ro.temperature, generator)
    return Samples(rewards)


def solve_federated(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    shards: Sequence[Sequence[Prompt]],
    config: Config,
    targets: str | None = None,
) -> tuple[PaletteSolution, Federation]:
    """Sample each client's reference rewards, then solve the palette from their merged statistics."""
    names = [name for name, _ in objectives]
    parsed = parse_targets(config.palette.targets if targets is None else targets, names)
    federation = Federation(client_reward_samples(policy, objectives, shards, config))
    solution = solve_palette(federation, parsed, names)
    solution.extra.update(
        clients=len(federation.clients),
        stat_rounds=federation.rounds,
        stat_upload_bytes=federation.upload_bytes,
        prompts_per_client=config.palette.prompts_per_client,
        samples_per_prompt=config.palette.samples_per_prompt,
    )
    return solution, federation


def palette_record(solution: PaletteSolution, federation: Federation, config: Config) -> dict[str, Any]:
    """palette.json's content: the solution, the preference rule and (M = 2, `palette.region`) the region.

    The region is a plot: if it fails, the record says why and nothing else stops. A solve that cannot
    afford its rounds (on Flower) says so in the solution's `region_skipped`, and the region is not drawn.
    """
    from firm.palette.plots import feasible_region

    record = solution.to_dict()
    record["weights"] = config.palette.weights
    if len(solution.names) == 2 and config.palette.region and "region_skipped" not in record:
        before = federation.rounds
        try:
            record["region"] = feasible_region(federation, solution.names)
            record["region_rounds"] = federation.rounds - before
        except Exception as err:
            record["region_error"] = f"{type(err).__name__}: {err}"
    return record


@dataclass(frozen=True)
class DecodingResult:
    """Mean rewards [M] on held-out prompts: all reference samples, best-of-n and tilted resampling."""

    n: int
    num_prompts: int
    reference: np.ndarray  # [M] mean over all n samples per prompt
    best_of_n: np.ndarray  # [M] mean of the argmax-lambda^T r sample per prompt
    tilted: np.ndarray  # [M] mean of one sample per prompt drawn ∝ exp(lambda^T r)

    def to_dict(self, names: Sequence[str]) -> dict[str, object]:
        def named(v: np.ndarray) -> dict[str, float]:
            return {n: float(x) for n, x in zip(names, v, strict=True)}

        return {
            "n": self.n,
            "num_prompts": self.num_prompts,
            "reference": named(self.reference),
            "best_of_n": named(self.best_of_n),
            "tilted": named(self.tilted),
        }


def select(rewards: np.ndarray, lam: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per group of n consecutive samples: index of the best lambda^T r, and one drawn ∝ exp(lambda^T r).

    Args:
        rewards  # [B * n, M], prompt-major
    Returns:
        (best  # [B], tilted  # [B]) indices into rewards
    """
    combined = (rewards @ lam).reshape(-1, n)  # [B, n]
    best = combined.argmax(axis=1)
    logits = combined - combined.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    tilted = np.array([rng.choice(n, p=row) for row in probs])
    offsets = np.arange(combined.shape[0]) * n
    return offsets + best, offsets + tilted


def best_of_n(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    prompts: Sequence[Prompt],
    lam: np.ndarray,
    n: int,
    config: Config,
) -> DecodingResult:
    """Decode each held-out prompt by best-of-n and by tilted resampling under lambda; report mean rewards."""
    if n < 1:
        raise ValueError(f"best-of-n: n must be >= 1, got {n}")
    ro, seed = config.rollout, config.federation.seed
    generator = torch_generator(policy.device, Stream.EVAL, seed, 2)
    rewards = reference_rewards(policy, objectives, prompts, n, ro.max_new_tokens, ro.temperature, generator)  # [B*n, M]
    best, tilted = select(rewards, np.asarray(lam, dtype=np.float64), n, numpy_rng(Stream.EVAL, seed, 3))
    return DecodingResult(
        n=n,
        num_prompts=len(prompts),
        reference=rewards.mean(axis=0),
        best_of_n=rewards[best].mean(axis=0),
        tilted=rewards[tilted].mean(axis=0),
    )
