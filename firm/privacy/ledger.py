"""The privacy ledger of a run: the RDP accountant, composed after every round, checked before one.

The accountant is the RDP accountant of Google's dp-accounting (`dp_accounting.rdp.RdpAccountant`;
Mironov 2017; the subsampled Gaussian without replacement: Wang, Balle and Kasiviswanathan 2019,
Theorem 27), used directly: Flower's `flwr.serverapp.RdpAccountant` wraps the same one but replays
every past round's composition on each query, which makes a run's accounting quadratic in its rounds
(about 0.3 s per composition here). The ledger composes each round once into one accountant, tries
the next round on a copy, and keeps its history run-length encoded, (noise, rounds) per stretch of
equal rounds, so that a resume composes each stretch once. What the accountant is told, and why:

- **Sampling: without replacement, fixed size.** Each round `firm.client.sample_clients` draws
  exactly k = `federation.clients_per_round` of the N = `federation.num_clients` clients, uniformly
  without replacement, from a stream of the run's seed. That is the `SampledWithoutReplacement`
  event (q = k / N), not Poisson sampling. The seed is known to whoever knows the config: the
  amplification by sampling holds against an adversary who does not know which clients a round
  drew (the clients' identities per round are in metrics.jsonl, which the server writes).
- **Adjacency: replace one client** (the relation that fixed-size sampling needs; the population
  N is public). Replacing one client's data changes the sum of clipped updates by at most 2C, so
  the accountant's noise multiplier is the noise std over that sensitivity: sigma C / (2C) = sigma / 2.
- **The noise a round really had.** With k' of the k sampled updates aggregated (dropouts), the
  sum carries noise std sigma C sqrt(k'/k) (firm.privacy.mechanism), accounted as sigma sqrt(k'/k) / 2.

The guarantee is client-level (epsilon, delta)-DP of the sequence of released aggregates (every
global adapter is post-processing of them), for `server` mode against everyone but the server, for
`client` mode also against the server when it sees only the sum (`engine.secure_aggregation`).
Without secure aggregation a `client`-mode server sees each noised update: that update alone is
the Gaussian mechanism at noise multiplier sigma / sqrt(k) on sensitivity 2C; `per_update_epsilon`
reports it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from firm.config import Config

REPLACE_ONE_SENSITIVITY = 2.0
"""The L2 sensitivity of the sum of clipped updates under replace-one adjacency, in units of C."""


class PrivacyLedger:
    """Epsilon at `privacy.delta` after every round; the budget check before one; state for the checkpoint."""

    def __init__(self, config: Config) -> None:
        p, fed = config.privacy, config.federation
        self.noise_multiplier, self.delta, self.max_epsilon = p.noise_multiplier, p.delta, p.max_epsilon
        self.population, self.sample = fed.num_clients, fed.clients_per_round
        self.history: list[list[float]] = []  # [accounted noise multiplier, rounds] per stretch of equal rounds
        self.releases = 0  # rounds released (also those at noise 0, which no accountant can take)
        self.unbounded = False  # a release at noise 0: epsilon is infinite from then on
        self._epsilon = 0.0
        self.accountant = self._accountant([])

    def accounted_noise(self, aggregated: int) -> float:
        """The accountant's noise multiplier for a round whose sum held `aggregated` of the k noise shares."""
        return self.noise_multiplier * math.sqrt(aggregated / self.sample) / REPLACE_ONE_SENSITIVITY

    def _event(self, sigma: float) -> dp_accounting.DpEvent:
        return dp_accounting.SampledWithoutReplacementDpEvent(self.population, self.sample, dp_accounting.GaussianDpEvent(sigma))

    def _accountant(self, history: list[list[float]]) -> RdpAccountant:
        accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        for sigma, count in history:
            accountant.compose(self._event(sigma), int(count))
        return accountant

    def _epsilon_of(self, accountant: RdpAccountant) -> float:
        return float(accountant.get_epsilon(self.delta))

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at `delta` (0 before any release, inf after one without noise)."""
        return self._epsilon

    def epsilon_after(self, aggregated: int) -> float:
        """What epsilon would be after one more round of `aggregated` updates (the ledger unchanged)."""
        if aggregated == 0:
            return self.epsilon
        if self.unbounded or self.noise_multiplier == 0:
            return math.inf
        trial = copy.deepcopy(self.accountant)
        trial.compose(self._event(self.accounted_noise(aggregated)))
        return self._epsilon_of(trial)

    def stop_reason(self, round_idx: int) -> str | None:
        """Why round `round_idx` must not run: its release (at the full k) would exceed `max_epsilon`; None if it may."""
        if self.max_epsilon <= 0:
            return None
        after = self.epsilon_after(self.sample)
        if after <= self.max_epsilon:
            return None
        return (
            f"privacy budget: round {round_idx} would take epsilon from {self.epsilon:.4g} to {after:.4g} "
            f"> privacy.max_epsilon = {self.max_epsilon:g} (delta {self.delta:g})"
        )

    def record(self, aggregated: int, rounds: int = 1) -> dict[str, Any]:
        """Compose the round just released (`aggregated` updates in its sum; `rounds` equal ones at once, for planning
        a budget); -> the metrics row's `privacy` field."""
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if aggregated > 0:
            if self.noise_multiplier == 0:
                self.unbounded = True
            else:
                sigma = self.accounted_noise(aggregated)
                self.accountant.compose(self._event(sigma), rounds)
                if self.history and self.history[-1][0] == sigma:
                    self.history[-1][1] += rounds
                else:
                    self.history.append([sigma, rounds])
            self.releases += rounds
            self._epsilon = math.inf if self.unbounded else self._epsilon_of(self.accountant)
        return {
            "epsilon": _finite_or_none(self.epsilon),
            "delta": self.delta,
            "releases": self.releases,
            "aggregated": aggregated,
            "accounted_noise_multiplier": self.accounted_noise(aggregated) if aggregated else None,
        }

    def per_update_epsilon(self) -> float:
        """`client` mode without secure aggregation: epsilon at `delta` of one client's noised updates seen one by one
        (no amplification: the server knows who sent each), an upper bound that counts the client in every round so far.

        Each update alone is the Gaussian mechanism with std sigma C / sqrt(k) on sensitivity 2C."""
        if self.noise_multiplier == 0:
            return math.inf
        if not self.releases:
            return 0.0
        accountant = RdpAccountant()
        sigma = self.noise_multiplier / math.sqrt(self.sample) / REPLACE_ONE_SENSITIVITY
        accountant.compose(dp_accounting.GaussianDpEvent(sigma), self.releases)
        return float(accountant.get_epsilon(self.delta))

    def summary(self, config: Config, stopped: str | None) -> dict[str, Any]:
        """summary.json's `privacy`: the settings, epsilon after the last round, why the run stopped early (or None);
        in `client` mode without secure aggregation also `per_update_epsilon`, what the server sees of each update."""
        p = config.privacy
        out: dict[str, Any] = {
            "mode": p.mode,
            "clip_norm": p.clip_norm,
            "noise_multiplier": p.noise_multiplier,
            "delta": p.delta,
            "max_epsilon": p.max_epsilon,
            "releases": self.releases,
            "epsilon": _finite_or_none(self.epsilon),
            "accounting": "RDP, sampled without replacement, replace-one adjacency (docs/privacy.md)",
            "stopped": stopped,
        }
        if p.mode == "client" and not config.engine.secure_aggregation:
            out["per_update_epsilon"] = _finite_or_none(self.per_update_epsilon())
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state; `load_state_dict` resumes it exactly."""
        return {
            "population": self.population,
            "sample": self.sample,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "history": [list(h) for h in self.history],
            "releases": self.releases,
            "unbounded": self.unbounded,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; a ValueError if it was made with other privacy or federation settings."""
        mine = (self.population, self.sample, self.noise_multiplier, self.delta)
        theirs = (state["population"], state["sample"], state["noise_multiplier"], state["delta"])
        if mine != theirs:
            raise ValueError(f"privacy ledger state made for (N, k, sigma, delta) = {theirs}, this run has {mine}")
        self.history = [[float(s), int(c)] for s, c in state["history"]]
        self.releases, self.unbounded = int(state["releases"]), bool(state["unbounded"])
        self.accountant = self._accountant(self.history)
        if self.unbounded:
            self._epsilon = math.inf
        else:
            self._epsilon = self._epsilon_of(self.accountant) if self.history else 0.0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
