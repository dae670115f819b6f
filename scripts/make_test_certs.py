#!/usr/bin/env python3
"""Create TLS certificates and SuperNode authentication keys for a Flower deployment.

FOR TESTING ONLY: the CA key is written unencrypted next to the certificates, and
the keys are created on the fly. Do not use these files in production.

Creates, in the output directory:

- ``ca.crt`` / ``ca.key``: a self-signed test CA (RSA 2048). ``ca.crt`` is what
  SuperNodes (``--root-certificates``), ``flwr`` (``root-certificates`` in
  ``$FLWR_HOME/config.toml``) and the SuperLink (``--ssl-ca-certfile``) are given.
- ``server.pem`` / ``server.key``: the SuperLink's TLS certificate signed by the CA,
  with SANs for ``localhost``, ``127.0.0.1`` and ``::1`` plus any ``--host`` values
  (DNS names or IP addresses), and its unencrypted PKCS#8 PEM private key.
- ``supernode-<i>.key`` / ``supernode-<i>.pub`` for i in 0..N-1: SuperNode
  authentication key pairs as flwr 1.41 expects them: ECDSA on NIST P-384, private
  key in OpenSSH format (``flower-supernode --auth-supernode-private-key``), public
  key as an OpenSSH line ``ecdsa-sha2-nistp384 ...``
  (``flwr supernode register <file.pub> <connection>``).

Command line::

    python scripts/make_test_certs.py OUT_DIR [--nodes N] [--host NAME_OR_IP ...]

From Python (``scripts/`` is not a package)::

    import runpy
    make_test_certs = runpy.run_path("scripts/make_test_certs.py")["make_test_certs"]
    paths = make_test_certs(Path("/tmp/certs"), nodes=2, hosts=["superlink.example"])
    paths["ca.crt"], paths["server.pem"], paths["supernode-0.key"], ...
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_test_certs"]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
VALIDITY_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write `data` to `path`; private keys get mode 0600."""
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _san_entry(host: str) -> x509.GeneralName:
    """Return an IP SAN if `host` is an IP address, else a DNS SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_private_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _make_ca(now: datetime.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Flower test CA (testing only)")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    now: datetime.datetime,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _rsa_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san_entry(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _make_node_keys(out_dir: Path, index: int) -> tuple[Path, Path]:
    """Write one SuperNode auth key pair (ECDSA P-384, OpenSSH formats)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    )
    private_path = _write(out_dir / f"supernode-{index}.key", private, private=True)
    public_path = _write(out_dir / f"supernode-{index}.pub", public + f" supernode-{index}\n".encode())
    return private_path, public_path


def make_test_certs(out_dir: Path, nodes: int, hosts: Sequence[str] = ()) -> dict[str, Path]:
    """Create a test CA, a SuperLink server certificate and `nodes` SuperNode key pairs.

    Args:
        out_dir: directory to write into (created if missing; existing files are overwritten).
        nodes: number of SuperNode authentication key pairs to create (>= 0).
        hosts: extra DNS names / IP addresses for the server certificate's SANs,
            on top of ``localhost``, ``127.0.0.1`` and ``::1``.

    Returns:
        File name -> path, for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` and
        ``supernode-<i>.key`` / ``supernode-<i>.pub`` for i in ``range(nodes)``.
    """
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *(h.strip() for h in hosts if h.strip())]))
    now = datetime.datetime.now(datetime.UTC)

    ca_key, ca_cert = _make_ca(now)
    server_key, server_cert = _make_server_cert(ca_key, ca_cert, all_hosts, now)
    paths: dict[str, Path] = {
        "ca.crt": _write(out_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        "ca.key": _write(out_dir / "ca.key", _pem_private_key(ca_key), private=True),
        "server.pem": _write(out_dir / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM)),
        "server.key": _write(out_dir / "server.key", _pem_private_key(server_key), private=True),
    }
    for i in range(nodes):
        private_path, public_path = _make_node_keys(out_dir, i)
        paths[private_path.name] = private_path
        paths[public_path.name] = public_path
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description="Create a test CA, SuperLink TLS certificate and SuperNode auth keys (testing only)."
    )
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--nodes", type=int, default=2, help="number of SuperNode key pairs (default: 2)")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="extra hostname or IP for the server certificate SANs (repeatable)",
    )
    args = parser.parse_args(argv)
    for name, path in make_test_certs(args.out_dir, args.nodes, args.host).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
