"""A client's side of a round, shared by every engine: its prompts, its random streams, its problems.

`problem_sampler` turns (client shard, round) into the `step -> LocalProblem` callable the
algorithms consume. Everything random is derived from (seed, round, client, step), so a client
produces the same update whichever engine runs it and in whatever order clients are visited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from firm.config import Config
from firm.data import Prompt
from firm.local_step import LocalProblem, Timer
from firm.objectives import Objective, bind_client
from firm.policy import Policy
from firm.policy_gradient import PolicyGradientProblem
from firm.seeding import Stream, derive_seed, numpy_rng, torch_generator


def sample_clients(seed: int, round_idx: int, num_clients: int, clients_per_round: int) -> list[int]:
    """The sorted ids of the clients that take part in round `round_idx` (without replacement)."""
    rng = numpy_rng(Stream.CLIENT_SAMPLING, seed, round_idx)
    return sorted(int(i) for i in rng.choice(num_clients, size=clients_per_round, replace=False))


def prompt_batch(shard: Sequence[Prompt], seed: int, round_idx: int, client_id: int, step: int, size: int) -> list[Prompt]:
    """B prompts of the client's shard for one local step (with replacement only if the shard is smaller than B)."""
    rng = numpy_rng(Stream.PROMPT_BATCH, seed, round_idx, client_id, step)
    idx = rng.choice(len(shard), size=size, replace=len(shard) < size)
    return [shard[int(i)] for i in np.atleast_1d(idx)]


def problem_sampler(
    policy: Policy,
    objectives: Sequence[tuple[str, Objective]],
    shard: Sequence[Prompt],
    config: Config,
    round_idx: int,
    client_id: int,
    timer: Timer | None = None,
) -> Callable[[int], LocalProblem]:
    """step -> the policy-gradient problem of a fresh rollout on this client's prompts."""
    seed, ro, alg = config.federation.seed, config.rollout, config.algorithm
    objectives = bind_client(objectives, client_id)  # a per-site objective becomes this client's own

    def sample_problem(step: int) -> LocalProblem:
        return PolicyGradientProblem(
            policy,
            objectives,
            prompt_batch(shard, seed, round_idx, client_id, step, ro.prompts_per_step),
            samples_per_prompt=ro.samples_per_prompt,
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            beta_kl=alg.beta_kl,
            clip_eps=alg.clip_eps,
            advantage_eps=alg.advantage_eps,
            generator=torch_generator(policy.device, Stream.ROLLOUT, seed, round_idx, client_id, step),
            dropout_seed=derive_seed(Stream.DROPOUT, seed, round_idx, client_id, step),
            vjp=alg.vjp,
            timer=timer,
            sampler=ro.sampler,
            precision=ro.precision,
            logprobs=alg.logprobs,
        )

    return sample_problem
