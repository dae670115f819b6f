"""Every random stream derives from (seed, keys...): no global seeding inside library code.

`derive_seed(seed, round, client, step, tag)` hashes the keys with numpy's SeedSequence, so the
stream of (round 3, client 1, step 0) is the same whatever ran before it: runs are reproducible
and clients are independent of the order an engine visits them in.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream tags: one per purpose so that no two purposes share a stream.
CLIENT_SAMPLING = 1
PROMPT_BATCH = 2
ROLLOUT = 3
EVAL = 4
PARTITION = 5
PALETTE = 6


def derive_seed(*keys: int) -> int:
    """A 63-bit seed determined by the integer keys."""
    # The key count goes first: SeedSequence ignores trailing zeros, so (s, 4) and (s, 4, 0) would collide.
    state = np.random.SeedSequence([len(keys), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def numpy_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*keys))


def torch_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A torch.Generator on `device` (sampling must draw on the device the logits live on)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*keys))
    return gen
