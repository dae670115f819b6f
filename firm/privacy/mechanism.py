"""The Gaussian mechanism of DP-FedAvg on one client's update: clip the whole update, add its share of the noise.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
Algorithm 1 with fixed clipping) releases, per round, the sum of the k sampled clients' clipped
updates plus Gaussian noise:

    clip(Delta_i) = Delta_i * min(1, C / ||Delta_i||_2)                 ||.||_2 over all payloads together
    S = sum_{i in round} clip(Delta_i) + N(0, sigma^2 C^2 I)

Here the noise is split into k shares, one per sampled client: client i's update is released as
clip(Delta_i) + N(0, sigma^2 C^2 / k I). The sum of k such updates is S exactly in distribution
(independent Gaussians add their variances), so the same step serves both modes: the server applies
it to each update it receives (`server` mode), or each client applies it before uploading
(`client` mode: the server never sees an un-noised update; under secure aggregation it sees only
S). When only k' < k updates arrive, the sum carries sigma^2 C^2 k'/k: the ledger accounts that
round at the noise it really had.

Several payloads (FMGDA: one per objective) are one vector: the norm is taken over all of them
together and all are scaled by the same factor, so the whole release has L2 sensitivity C and
every payload coordinate gets the same noise (each payload's share of the norm is what is left
for it: about C / sqrt(M) when the M are of similar size).

Deviation, as in Opacus without its secure mode: the noise is drawn by torch's generator from a
secret 63-bit seed (`secret_generator`, from `secrets`), not by a cryptographically secure
sampler, and floating-point Gaussian sampling is not exactly the Gaussian mechanism (Mironov 2012).
The seed is never logged or checkpointed, so DP runs are not bit-reproducible.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import torch

from firm.codec import Adapter


def update_norm(uploads: Sequence[Adapter]) -> float:
    """||Delta||_2 of a client's whole update: all its payloads' tensors as one vector (float64)."""
    total = 0.0
    for payload in uploads:
        for t in payload.values():
            total += float(t.detach().to(torch.float64).pow(2).sum())
    return math.sqrt(total)


def clip_update(uploads: Sequence[Adapter], clip_norm: float) -> tuple[list[Adapter], float]:
    """Every payload scaled by min(1, C / ||Delta||_2); -> (clipped uploads, the norm before clipping).

    The scaled tensors keep their dtypes; the scale is computed in float64, and the clipped update's
    norm is at most C up to the dtype's rounding (float32: a relative 1e-7)."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = update_norm(uploads)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if scale == 1.0:
        return [dict(p) for p in uploads], norm
    clipped = [{name: (t.to(torch.float64) * scale).to(t.dtype) for name, t in payload.items()} for payload in uploads]
    return clipped, norm


def add_noise(uploads: Sequence[Adapter], std: float, generator: torch.Generator) -> list[Adapter]:
    """Each coordinate plus an independent N(0, std^2), drawn in float32 on the CPU from `generator`; dtypes kept."""
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    if std == 0:
        return [dict(p) for p in uploads]
    noisy = []
    for payload in uploads:
        out = {}
        for name in sorted(payload):  # a fixed order: the draw does not depend on dict order
            t = payload[name]
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32) * std
            out[name] = (t.to(torch.float32) + noise.to(t.device)).to(t.dtype)
        noisy.append({name: out[name] for name in payload})
    return noisy


def noise_share(clip_norm: float, noise_multiplier: float, clients_per_round: int) -> float:
    """The standard deviation each of the k sampled clients' updates gets: sigma C / sqrt(k)."""
    return noise_multiplier * clip_norm / math.sqrt(clients_per_round)


def privatize(
    uploads: Sequence[Adapter], clip_norm: float, std: float, generator: torch.Generator
) -> tuple[list[Adapter], float]:
    """clip_update then add_noise; -> (the released uploads, the norm before clipping)."""
    clipped, norm = clip_update(uploads, clip_norm)
    return add_noise(clipped, std, generator), norm


def secret_generator() -> torch.Generator:
    """A CPU torch.Generator seeded from the OS's secure randomness (`secrets.randbits(63)`), never stored."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(secrets.randbits(63))
    return gen
