"""Every random stream derives from (stream, seed, keys...): no global seeding inside library code.

`derive_seed(stream, seed, round, client, step)` hashes the keys with numpy's SeedSequence. The
stream tag (one `Stream` per purpose) always comes first, so two purposes never share a stream
whatever their other keys are: with the tag last, (seed, round 5, client sampling = 1) was the
partition's (seed, PARTITION = 5, 1). The stream of (round 3, client 1, step 0) is the same
whatever ran before it: runs are reproducible and clients are independent of the order an engine
visits them in.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """The purpose of a random stream: the first key of every derived seed."""

    CLIENT_SAMPLING = 1  # (seed, round): which clients take part in a round
    PROMPT_BATCH = 2  # (seed, round, client, step): a local step's prompts
    ROLLOUT = 3  # (seed, round, client, step): a local step's sampled completions
    EVAL = 4  # (seed, sub-stream): held-out evaluation and samples.jsonl
    PARTITION = 5  # (seed, sub-stream): held-out split and client partition
    PALETTE = 6  # (seed, sub-stream, client): the palette's reference samples
    DROPOUT = 7  # (seed, round, client, step, forward): LoRA dropout masks of a gradient forward
    BENCHMARK = 8  # (seed, ...): benchmark scripts' own draws
    REWARD = 9  # (seed, purpose, ...): reward-predictor training (firm.rewards): initialisation, sampling, episodes


def derive_seed(stream: Stream, *keys: int) -> int:
    """A 63-bit seed determined by the stream tag and the integer keys."""
    # The key count goes first: SeedSequence ignores trailing zeros, so (s, 4) and (s, 4, 0) would collide.
    words = [len(keys) + 1, int(Stream(stream)), *(int(k) for k in keys)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def numpy_rng(stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(stream, *keys))


def torch_generator(device: torch.device, stream: Stream, *keys: int) -> torch.Generator:
    """A torch.Generator on `device` (sampling must draw on the device the logits live on)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(stream, *keys))
    return gen
