"""Epsilon after T rounds for a few federation sizes and noise multipliers: the table of docs/privacy.md.

    python benchmarks/privacy_budget.py [--rounds 50] [--delta 1e-5]

Each figure is `firm.privacy.ledger.PrivacyLedger` after T full rounds of k of N clients (sampled
without replacement, replace-one adjacency: the accountant's noise multiplier is sigma / 2). The
bound depends on N and k only through q = k / N.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from firm.config import Config
from firm.privacy.ledger import PrivacyLedger


def epsilon(clients: int, per_round: int, sigma: float, rounds: int, delta: float) -> float:
    """Epsilon at `delta` after `rounds` full rounds."""
    base = Config()
    config = dataclasses.replace(
        base,
        federation=dataclasses.replace(base.federation, num_clients=clients, clients_per_round=per_round),
        privacy=dataclasses.replace(base.privacy, mode="server", noise_multiplier=sigma, delta=delta),
    )
    ledger = PrivacyLedger(config)
    ledger.record(per_round, rounds=rounds)  # T equal rounds at once
    return ledger.epsilon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--delta", type=float, default=1e-5)
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's notes on orders it skips
    sigmas = (0.5, 1.0, 2.0, 4.0)
    print("| N clients, k per round | " + " | ".join(f"sigma = {s:g}" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for n, k in ((4, 2), (10, 10), (100, 10), (1000, 10)):
        cells = [f"{epsilon(n, k, s, args.rounds, args.delta):.3g}" for s in sigmas]
        print(f"| {n}, {k} | " + " | ".join(cells) + " |")
    print(f"\nepsilon at delta {args.delta:g} after {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
