"""The TLS rule: plaintext to a SuperLink only on this machine's loopback (docs/deployment.md).

Used by the config's validation, by `firm train engine=flower` (`submit`, also for a Config built
in code) and by `firm flower up`. No name is resolved.
"""

from __future__ import annotations

import ipaddress

from firm.config import ConfigError, EngineConfig


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


def validate_engine(engine: EngineConfig) -> None:
    """The engine.* checks: round timeout, and on Flower the address, the TLS rule and the CA file."""
    from pathlib import Path

    if not engine.round_timeout > 0:
        raise ConfigError(f"engine.round_timeout: must be > 0 seconds, got {engine.round_timeout}")
    if engine.name == "flower":
        check_address("engine.superlink", engine.superlink)
        check_engine_transport(engine)
        if engine.root_certificates and not Path(engine.root_certificates).is_file():
            raise ConfigError(f"engine.root_certificates: file not found: {engine.root_certificates}")
