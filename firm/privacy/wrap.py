"""DP-FedAvg through the algorithm seam: the run's algorithm, wrapped so that every engine applies the mechanism.

    build_algorithm(config) -> REGISTRY[algorithm.name](config), wrapped in `PrivateAlgorithm` when privacy is on

`client` mode: `client_update` runs the algorithm's own update, then clips the whole update to C
and adds the client's noise share (firm.privacy.mechanism) before it is encoded and uploaded, on
whichever process runs the client (in process, or the Flower ClientApp). `server` mode: the
server's aggregator clips and noises each update as it is added, before the algorithm's own
aggregator sees it. Either way every update is added with weight 1 (the clipped mean of DP-FedAvg
with a fixed denominator; honest clients all report the same sample count, which the server checks
(firm.robust), so this is also the sample-weighted mean); the algorithm's `server_update` then runs
on its own aggregator as without privacy.

What the wrapper adds to a round's `server` log: `privacy.clipped` (updates scaled down this round)
and `privacy.mean_norm` (their mean norm before clipping; `server` mode only: in `client` mode the
server never sees the norm). Refused (`validate_config`): the references (no federation to protect),
FedCMOO (its probes are a second release per round, not accounted here), the robust rules (the
ledger accounts a noised sum, not a median of updates), the norm screen in `server` mode (it decides
on un-noised updates and its decision would leak; in `client` mode it only sees released updates),
`aggregation.clip_norm` beside `privacy.clip_norm`, `server` mode under secure aggregation, and
values out of range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from firm.algorithms import REGISTRY
from firm.algorithms.protocol import Aggregator, Algorithm, ClientUpdate, RoundShape
from firm.codec import Adapter
from firm.config import REFERENCES, Config, ConfigError
from firm.local_step import LocalProblem, Timer
from firm.privacy.mechanism import noise_share, privatize, secret_generator


def build_algorithm(config: Config) -> Algorithm:
    """The algorithm a run uses: the registry's, wrapped in `PrivateAlgorithm` when `privacy.mode` is not `off`."""
    algorithm = REGISTRY[config.algorithm.name](config)
    return algorithm if config.privacy.mode == "off" else PrivateAlgorithm(algorithm, config)


class NoisingAggregator:
    """`server` mode: clip and noise each update as it arrives, then add it to the algorithm's aggregator with weight 1."""

    def __init__(self, inner: Aggregator, clip_norm: float, std: float, generator: torch.Generator) -> None:
        self.inner, self.clip_norm, self.std, self.generator = inner, clip_norm, std, generator
        self.norms: list[float] = []

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        """Privatize one client's update (its weight is replaced by 1: see the module docstring) and aggregate it."""
        payloads = [uploads] if isinstance(uploads, dict) else list(uploads)
        released, norm = privatize(payloads, self.clip_norm, self.std, self.generator)
        self.norms.append(norm)
        self.inner.add(released if len(released) > 1 else released[0], 1.0)

    def update_drift(self) -> float:
        """The inner aggregator's drift, of the noised updates (noise inflates it: compare runs at the same sigma)."""
        return self.inner.update_drift()

    @property
    def stats(self) -> dict[str, Any]:
        clipped = sum(n > self.clip_norm for n in self.norms)
        own = dict(getattr(self.inner, "stats", {}))
        mean_norm = sum(self.norms) / len(self.norms) if self.norms else None
        return {**own, "privacy": {"clipped": clipped, "mean_norm": mean_norm}}


class UniformAggregator:
    """`client` mode: the updates arrive clipped and noised; add each with weight 1 to the algorithm's aggregator."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner

    def add(self, uploads: Adapter | Sequence[Adapter], weight: float) -> None:
        self.inner.add(uploads, 1.0)

    def update_drift(self) -> float:
        return self.inner.update_drift()

    @property
    def stats(self) -> dict[str, Any]:
        return dict(getattr(self.inner, "stats", {}))


class PrivateAlgorithm:
    """An algorithm with DP-FedAvg's clipping and noise around its uploads (see the module docstring)."""

    def __init__(self, inner: Algorithm, config: Config) -> None:
        p = config.privacy
        self.inner, self.mode, self.clip_norm = inner, p.mode, p.clip_norm
        self.std = noise_share(p.clip_norm, p.noise_multiplier, config.federation.clients_per_round)
        self._generator: torch.Generator | None = None

    @property
    def generator(self) -> torch.Generator:
        """The secret noise generator of this process, created on first use."""
        if self._generator is None:
            self._generator = secret_generator()
        return self._generator

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def shape(self) -> RoundShape:
        return self.inner.shape

    def __getattr__(self, attr: str) -> Any:  # the algorithm's other attributes (uses_preference, ...)
        return getattr(self.inner, attr)

    def client_update(
        self,
        params: dict[str, torch.nn.Parameter],
        sample_problem: Callable[[int], LocalProblem],
        client_state: dict[str, Any],
        timer: Timer | None = None,
    ) -> ClientUpdate:
        """The algorithm's update; in `client` mode, its uploads clipped and noised before they leave the client."""
        update = self.inner.client_update(params, sample_problem, client_state, timer)
        if self.mode == "client":
            update.uploads, _ = privatize(update.uploads, self.clip_norm, self.std, self.generator)
        return update

    def new_aggregator(self) -> Aggregator:
        inner = self.inner.new_aggregator()
        if self.mode == "server":
            return NoisingAggregator(inner, self.clip_norm, self.std, self.generator)
        return UniformAggregator(inner)

    def server_update(self, global_adapter: Adapter, aggregator: Aggregator) -> Adapter:
        """The algorithm's own server step on its own aggregator."""
        assert isinstance(aggregator, NoisingAggregator | UniformAggregator), "an aggregator of another algorithm"
        return self.inner.server_update(global_adapter, aggregator.inner)


def validate_config(config: Config) -> None:
    """The `[privacy]` values, and the combinations that cannot work, as one-line ConfigErrors."""
    p = config.privacy
    if p.mode == "off":
        return
    fed, agg = config.federation, config.aggregation
    checks: list[tuple[bool, str]] = [
        (p.clip_norm > 0, f"privacy.clip_norm: must be > 0, got {p.clip_norm}"),
        (p.noise_multiplier >= 0, f"privacy.noise_multiplier: must be >= 0, got {p.noise_multiplier}"),
        (0 < p.delta < 1.0 / fed.num_clients, f"privacy.delta: must be in (0, 1 / federation.num_clients = {1 / fed.num_clients:g}), got {p.delta:g}"),
        (p.max_epsilon >= 0, f"privacy.max_epsilon: must be >= 0 (0 = no limit), got {p.max_epsilon}"),
        (config.algorithm.name not in REFERENCES, f"privacy.mode: {config.algorithm.name} is a non-federated reference; nothing is released to protect"),
        (config.algorithm.name in REFERENCES or not REGISTRY[config.algorithm.name](config).shape.probes,
         f"privacy.mode: {config.algorithm.name} uploads probes before its update (two releases per round), which the ledger does not account; use firm, fedavg, mgda or fmgda"),
        (agg.rule == "mean", f"privacy.mode: aggregation.rule = {agg.rule} needs the individual, un-noised updates; use aggregation.rule=mean"),
        (p.mode == "client" or agg.max_norm_ratio == 0, "privacy.mode=server: the norm screen (aggregation.max_norm_ratio) decides on the un-noised updates and its decision leaks; set aggregation.max_norm_ratio=0 (clipping bounds every update already)"),
        (agg.clip_norm == 0, "privacy.mode: aggregation.clip_norm is a second clip; privacy.clip_norm is the one that counts: set aggregation.clip_norm=0"),
        (not (p.mode == "server" and config.engine.secure_aggregation),
         "privacy.mode=server: under engine.secure_aggregation the server sees only the sum and cannot clip each update; use privacy.mode=client"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
