"""
A self-signed certificate for development and tests: C{localhost} and
C{127.0.0.1} (and C{::1}), valid for a year.  Never for production.

C{python -m omega_ws.devcert [DIR]} writes C{DIR/dev-cert.pem} and
C{DIR/dev-key.pem} (the key readable by its owner only).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["make_self_signed", "write_pair"]


def make_self_signed(
    dns_names: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    days: int = 365,
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM), an ECDSA P-256 pair."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(directory: Path) -> tuple[Path, Path]:
    """Write C{dev-cert.pem} and C{dev-key.pem} into C{directory}."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_self_signed()
    cert_path, key_path = directory / "dev-cert.pem", directory / "dev-key.pem"
    cert_path.write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(key_pem)
    return cert_path, key_path


if __name__ == "__main__":
    cert, key = write_pair(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    sys.stdout.write(f"wrote {cert} and {key}\n")
