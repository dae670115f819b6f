"""Federated algorithms, one small module each; `REGISTRY` maps config names to constructors.

Add an algorithm in three steps:
1. copy `fedavg.py` (fixed weights) or `firm.py` (a rule gram -> weights) to `<name>.py`, keeping `protocol.Algorithm`'s
   members; its `shape` (a `protocol.RoundShape`) tells the engines how many payloads a client uploads and whether the
   clients probe first (then it is a `protocol.Prober`, like `fedcmoo.py`; tests/test_round_shape.py defines one);
2. import it below and add `"<name>": <Class>.from_config` to `REGISTRY`: `algorithm.name=<name>` then runs on every engine;
3. add it to `ALGORITHMS` in tests/test_end_to_end.py (tiny model, end to end) and write docs/algorithms/<name>.md.

An algorithm whose training never reads `objectives.preference` declares `uses_preference = False` (a class
attribute, or a property of its settings, like `fmgda.py`'s); a preference sweep (firm.sweep) then runs it once per
seed instead of once per preference. Undeclared means True: running it at every preference is never wrong.
"""

from __future__ import annotations

from firm.algorithms.fedavg import FedAvg
from firm.algorithms.fedcmoo import FedCmoo
from firm.algorithms.firm import Firm
from firm.algorithms.firm import validate_config as validate_firm
from firm.algorithms.fmgda import Fmgda
from firm.algorithms.mgda import Mgda
from firm.algorithms.protocol import Aggregator, Algorithm, AlgorithmFactory, ClientUpdate
from firm.config import REFERENCES, Config, ConfigError

REGISTRY: dict[str, AlgorithmFactory] = {
    "firm": Firm.from_config,
    "fedavg": FedAvg.from_config,
    "mgda": Mgda.from_config,
    "fmgda": Fmgda.from_config,
    "fedcmoo": FedCmoo.from_config,
}


def validate_config(config: Config) -> None:
    """`algorithm.name` is a key of `REGISTRY` or a reference (`firm.config.REFERENCES`, run by firm.launch);
    the algorithms' own sections ([fmgda], [fedcmoo]) and FIRM's reg schedule hold values they accept."""
    validate_firm(config)
    if not config.fedcmoo.compression > 0:
        raise ConfigError(f"fedcmoo.compression: must be > 0, got {config.fedcmoo.compression}")
    if config.algorithm.name not in REGISTRY and config.algorithm.name not in REFERENCES:
        raise ConfigError(
            f"algorithm.name: unknown algorithm {config.algorithm.name!r}; allowed: {', '.join(sorted([*REGISTRY, *REFERENCES]))}"
        )


def uses_preference(config: Config) -> bool:
    """Whether training with `config` reads the preference p: the algorithm's `uses_preference` (default True);
    for a reference (centralized, local), that of its single learner's rule, `algorithm.reference_rule`."""
    name = config.algorithm.name
    if name in REFERENCES:
        name = config.algorithm.reference_rule
    return bool(getattr(REGISTRY[name](config), "uses_preference", True))


__all__ = [
    "REGISTRY",
    "Aggregator",
    "Algorithm",
    "ClientUpdate",
    "FedAvg",
    "FedCmoo",
    "Firm",
    "Fmgda",
    "Mgda",
    "uses_preference",
    "validate_config",
]
