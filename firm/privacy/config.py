"""The `[privacy]` section of a run's config: client-level differential privacy (docs/privacy.md).

A leaf module (it imports nothing from firm) so that `firm.config` can hold it as a section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PrivacyConfig:
    mode: Literal["off", "server", "client"] = "off"
    """Client-level DP (DP-FedAvg): `server` = the trusted server clips each received update and adds the noise;
    `client` = each client clips and noises its own update before it leaves the client (the server need not be
    trusted; with `engine.secure_aggregation` it sees only the noised sum); `off` = no clipping, noise or accounting."""
    clip_norm: float = 1.0
    """C: every client's whole update (all its payloads together, as one vector) is scaled down to L2 norm <= C."""
    noise_multiplier: float = 1.0
    """sigma: Gaussian noise of standard deviation sigma x C on the sum of a round's clipped updates (sigma x C / k on
    their mean, k = federation.clients_per_round); 0 = clipping only, with no privacy guarantee (epsilon = inf)."""
    delta: float = 1e-5
    """delta of the (epsilon, delta) guarantee reported after every round; must be below 1 / federation.num_clients."""
    max_epsilon: float = 0.0
    """Stop the run cleanly, with a checkpoint, before a round whose release would take epsilon above this; 0 = no limit."""
