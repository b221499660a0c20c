"""The development certificate: names, key type, file modes."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from omega_ws.devcert import make_self_signed, write_pair


def test_certificate_names_localhost_and_loopback() -> None:
    cert_pem, key_pem = make_self_signed()
    certificate = x509.load_pem_x509_certificate(cert_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_write_pair_keeps_the_key_private(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "certs")
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
