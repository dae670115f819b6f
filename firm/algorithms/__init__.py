"""Federated algorithms, one small module each; `REGISTRY` maps config names to constructors."""

from __future__ import annotations

from firm.algorithms.fedavg import FedAvg
from firm.algorithms.fedcmoo import FedCmoo
from firm.algorithms.firm import Firm
from firm.algorithms.fmgda import Fmgda
from firm.algorithms.mgda import Mgda
from firm.algorithms.protocol import Aggregator, Algorithm, AlgorithmFactory, ClientUpdate

REGISTRY: dict[str, AlgorithmFactory] = {
    "firm": Firm.from_config,
    "fedavg": FedAvg.from_config,
    "mgda": Mgda.from_config,
    "fmgda": Fmgda.from_config,
    "fedcmoo": FedCmoo.from_config,
}

__all__ = ["REGISTRY", "Aggregator", "Algorithm", "ClientUpdate", "FedAvg", "FedCmoo", "Firm", "Fmgda", "Mgda"]
