"""The engine's checks: the TLS rule (plaintext to a SuperLink only on this machine's loopback, docs/deployment.md)
and the settings secure aggregation cannot run with (docs/privacy.md, "Secure aggregation").

Used by the config's validation, by `firm train engine=flower` (`submit`, also for a Config built
in code), by the Flower engine and by `firm flower up`. No name is resolved.
"""

from __future__ import annotations

import ipaddress
import math

from firm.config import REFERENCES, Config, ConfigError, EngineConfig

SECAGG_MODULUS = 2**32
"""The modulus of Flower's SecAgg+ masked sums (its `modulus_range` default, which FIRM keeps)."""


def is_loopback_address(address: str) -> bool:
    """`host:port` names this machine's loopback: `localhost`, 127.0.0.0/8 or ::1 (IPv6 in brackets or bare).

    No name is resolved: any other host name counts as remote, since its DNS answer can change.
    """
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_engine_transport(engine: EngineConfig) -> None:
    """The TLS rule: plaintext to the SuperLink only on loopback, unless `engine.insecure_non_loopback`."""
    if engine.root_certificates or engine.insecure_non_loopback or is_loopback_address(engine.superlink):
        return
    raise ConfigError(
        f"engine.superlink: {engine.superlink} is not a loopback address and engine.root_certificates is empty, "
        "so the run would travel in plaintext; set engine.root_certificates to the CA file of the SuperLink's TLS "
        "certificate (or engine.insecure_non_loopback=true if TLS is terminated outside Flower)"
    )


def check_address(key: str, address: str) -> None:
    """`host:port` with a port in 1..65535, or a ConfigError naming `key`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, e.g. 127.0.0.1:8000, got {address!r}")


def check_secure_aggregation_engine(engine: EngineConfig) -> None:
    """The engine.secagg_* values on their own; what they need of the rest of the config is `validate_secure_aggregation`'s."""
    if not engine.secure_aggregation:
        return
    if engine.name != "flower":
        raise ConfigError(
            "engine.secure_aggregation: SecAgg+ runs between Flower SuperNodes; set engine.name=flower "
            "(the in-process clients run inside the server's process, so there is no one to hide an update from)"
        )
    shares, threshold = engine.secagg_num_shares, engine.secagg_reconstruction_threshold
    if shares != 0 and shares < 3:
        raise ConfigError(f"engine.secagg_num_shares: 0 (every client of the round) or 3 or more, got {shares}")
    if threshold != 0 and threshold < 2:
        raise ConfigError(f"engine.secagg_reconstruction_threshold: 0 (a majority of the shares) or 2 or more, got {threshold}")
    if not 0 < engine.secagg_clipping_range < math.inf:
        raise ConfigError(f"engine.secagg_clipping_range: must be > 0 and finite, got {engine.secagg_clipping_range}")
    if engine.secagg_quantization_range < 2:
        raise ConfigError(f"engine.secagg_quantization_range: must be 2 or more levels, got {engine.secagg_quantization_range}")


def validate_secure_aggregation(config: Config) -> None:
    """The combinations SecAgg+ cannot run, each refused with one line naming the key.

    Under secure aggregation the server sees only the round's sum, so nothing that needs one
    client's update can act: the robust rules, the norm screen, the server's clipping, and
    FedCMOO's probes (sent in the clear before the update). Compressed uploads cannot be summed
    under the masks. With fewer than 3 clients per round each client could read the other's
    update off the next global adapter (it knows its own and the mean).
    """
    engine = config.engine
    if not engine.secure_aggregation:
        return
    check_secure_aggregation_engine(engine)
    name, per_round, agg = config.algorithm.name, config.federation.clients_per_round, config.aggregation
    if name in REFERENCES:
        raise ConfigError(f"engine.secure_aggregation: {name} is a non-federated reference; there are no client updates to sum")
    if per_round < 3:
        raise ConfigError(
            f"federation.clients_per_round: secure aggregation needs 3 or more clients per round, got {per_round} "
            "(with 2, each client reads the other's update off the next global adapter)"
        )
    shares = engine.secagg_num_shares or per_round
    if shares > per_round:
        raise ConfigError(f"engine.secagg_num_shares: {shares} is more than federation.clients_per_round = {per_round}")
    if shares < per_round and shares % 2 == 0:
        raise ConfigError(
            f"engine.secagg_num_shares: below federation.clients_per_round it must be odd (Flower's SecAgg+ takes "
            f"num_shares // 2 neighbours on each side of a ring), got {shares}"
        )
    threshold = engine.secagg_reconstruction_threshold or shares // 2 + 1
    if threshold >= shares:
        raise ConfigError(
            f"engine.secagg_reconstruction_threshold: {threshold} must be below the {shares} shares (engine.secagg_num_shares), "
            "or no client could drop out"
        )
    if per_round * engine.secagg_quantization_range >= SECAGG_MODULUS:
        raise ConfigError(
            f"engine.secagg_quantization_range: {per_round} clients x {engine.secagg_quantization_range} levels reach the 2**32 "
            f"modulus of the masked sums, which would wrap; use at most {(SECAGG_MODULUS - 1) // per_round}"
        )
    if agg.rule != "mean":
        raise ConfigError(
            f"aggregation.rule: {agg.rule!r} needs every update of the round, and under engine.secure_aggregation the server "
            "sees only their sum; use aggregation.rule=mean"
        )
    if agg.max_norm_ratio > 0:
        raise ConfigError(
            "aggregation.max_norm_ratio: the norm screen needs each update's norm, and under engine.secure_aggregation the "
            "server sees only the sum; set aggregation.max_norm_ratio=0 (the quantiser bounds every value to "
            "engine.secagg_clipping_range)"
        )
    if agg.clip_norm > 0:
        raise ConfigError(
            "aggregation.clip_norm: the server cannot clip an update it never sees (engine.secure_aggregation); set "
            "aggregation.clip_norm=0 (privacy.mode=client clips each update on its client)"
        )
    if config.compression.kind != "none":
        raise ConfigError(
            f"compression.kind: {config.compression.kind} uploads cannot be summed under SecAgg+'s masks, which quantise "
            "every value themselves; use compression.kind=none"
        )
    from firm.algorithms import REGISTRY  # torch: only when secure aggregation is asked for

    if name in REGISTRY and REGISTRY[name](config).shape.probes:
        raise ConfigError(
            f"algorithm.name: {name} uploads each client's probe (top-k gradients) in the clear before its update, which "
            "secure aggregation would not hide; use firm, fedavg, mgda or fmgda"
        )


def validate_engine(engine: EngineConfig) -> None:
    """The engine.* checks: round timeout, secure aggregation's own values, and on Flower the address, the TLS
    rule and the CA file."""
    from pathlib import Path

    if not engine.round_timeout > 0:
        raise ConfigError(f"engine.round_timeout: must be > 0 seconds, got {engine.round_timeout}")
    check_secure_aggregation_engine(engine)
    if engine.name == "flower":
        check_address("engine.superlink", engine.superlink)
        check_engine_transport(engine)
        if engine.root_certificates and not Path(engine.root_certificates).is_file():
            raise ConfigError(f"engine.root_certificates: file not found: {engine.root_certificates}")
