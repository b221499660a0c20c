"""
Checks of single configuration values, the ones that look outside the
value itself (files, endpoint strings) and the numeric bounds, each
raising L{ConfigError} with one line that names the key.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "at_least", "check_broker", "check_listen", "check_public_key",
           "check_tls", "positive"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key."""


def check_broker(url: str, prefix: str) -> None:
    """C{memory://}, or Redis URLs (comma-separated shards) that parse."""
    if url.startswith("memory://"):
        return
    from .broker.redis.layout import parse_broker_url
    try:
        parse_broker_url(url)
    except ValueError as e:
        raise ConfigError(f"broker.url: {e} (use memory:// or redis://host:port/db, "
                          "several separated by commas)") from None
    if not prefix or any(c in prefix for c in "{} \t\r\n"):
        raise ConfigError(f"broker.prefix: {prefix!r} must be non-empty, without braces or "
                          "spaces")


def at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: {value} is below the minimum ({minimum})")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: {value} must be greater than 0")


def _readable(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path} ({e.strerror})") from None
    except ValueError as e:  # a NUL byte in the path
        raise ConfigError(f"{key}: {path!r} is not a valid path ({e})") from None


def check_public_key(path: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = _readable("auth.token_public_key", path)
    try:
        load_pem_public_key(pem)
    except ValueError as e:
        raise ConfigError(
            f"auth.token_public_key: {path} is not a PEM public key ({e})") from None


def check_tls(cert: str | None, key: str | None) -> None:
    """C{server.cert} and C{server.key}: both or neither, readable, matching."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        missing, present = ("server.key", "server.cert") if key is None else (
            "server.cert", "server.key")
        raise ConfigError(f"{missing}: required when {present} is set")
    # Imported here: only a configuration that asks for TLS needs pyOpenSSL.
    from OpenSSL import crypto
    from twisted.internet import ssl

    cert_pem = _readable("server.cert", cert)
    key_pem = _readable("server.key", key)
    try:
        certificate = ssl.Certificate.loadPEM(cert_pem)
    except Exception as e:
        raise ConfigError(f"server.cert: {cert} is not a PEM certificate ({e})") from None
    try:
        pair = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except Exception as e:
        raise ConfigError(f"server.key: {key} is not a PEM private key ({e})") from None
    try:
        ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate, pair).options()
    except Exception as e:
        raise ConfigError(
            f"server.key: {key} does not match the certificate {cert} ({e})"
        ) from None


def check_listen(listen: tuple[str, ...]) -> None:
    from twisted.internet import endpoints
    from twisted.internet.testing import MemoryReactor

    for description in listen:
        try:
            # Parsing only builds the endpoint object; nothing listens yet.
            endpoints.serverFromString(MemoryReactor(), description)
        except (IndexError, KeyError):
            raise ConfigError(
                f"server.listen: {description!r} names an inherited socket that is not "
                "there (run it under systemd socket activation)"
            ) from None
        except Exception as e:
            raise ConfigError(
                f"server.listen: {description!r} is not a valid endpoint ({e})"
            ) from None
