"""Federated palette statistics: clients answer with sums and counts at the server's lambda and thresholds, not their samples.

The MAP dual (firm.palette.dual) at a given lambda (and centre: the reference mean, sent along with
lambda so that the sums are taken around it) needs only sums over the reward samples: total
weight, a log-sum-exp shift, sum of e_i, sum of e_i r_i [M] and sum of e_i r_i r_i^T [M, M] with
e_i = w_i exp(lambda^T r_i - shift). Sums over clients add up (after rescaling to a common shift),
so each solver step is one round: the server sends lambda, each client answers with its
`TiltStats` on its own samples, the server merges them with `merge_stats`. Quantile targets need
only counts: "how many of your samples have reward m <= t?".

What leaves a client per round: 3 + M + M^2 floats (plus one count per quantile bisection step).
That is not a privacy guarantee. The server picks every question, and the answers reveal the
client's rewards to a server that asks for them: `count_at_most` at thresholds of its choosing
bisects any reward value, the `shift` is max_i lambda^T r_i along any direction it picks (the
infeasibility certificate uses it), and a hard tilt's sums are the top sample's whole reward
vector (docs/palette.md, "What the server learns"; tests/test_palette_math.py, section 10).
The prompts, the completions and which prompt a reward belongs to stay on the client.

With the statistics merged exactly, the federated solve follows the pooled solve's iterates: the
two lambdas agree to floating-point rounding (tests/test_palette_math.py and tests/test_palette.py check 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from firm.palette.dual import RewardOracle, TiltStats, merge_stats

FLOAT_BYTES = 8


@dataclass
class Federation:
    """The server's view of the clients' reward samples: it can only ask for statistics.

    `clients` are the clients' own oracles (`firm.palette.dual.Samples` in process; anything with
    `stats` and `count_at_most`). `stats_rounds`, `count_rounds` and `upload_bytes` count what it cost.
    """

    clients: Sequence[RewardOracle]
    stats_rounds: int = 0
    count_rounds: int = 0
    upload_bytes: int = 0

    @property
    def rounds(self) -> int:
        """Rounds of messages so far: tilt statistics plus quantile counts."""
        return self.stats_rounds + self.count_rounds

    def __post_init__(self) -> None:
        if not self.clients:
            raise ValueError("a palette federation needs at least one client with reward samples")

    def stats(self, lam: np.ndarray, center: np.ndarray | None = None) -> TiltStats:
        parts = [client.stats(lam, center) for client in self.clients]  # one message per client
        num_values = len(lam)
        self.stats_rounds += 1
        self.upload_bytes += len(parts) * FLOAT_BYTES * (3 + num_values + num_values * num_values)
        return merge_stats(parts)

    def count_at_most(self, value: int, threshold: float) -> float:
        self.count_rounds += 1
        self.upload_bytes += len(self.clients) * FLOAT_BYTES
        return sum(client.count_at_most(value, threshold) for client in self.clients)
