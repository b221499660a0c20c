"""Tests for L{omega_ws.auth}: JWT connection tokens (HS256 and RS256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from omega_ws.auth import Identity, InvalidToken, TokenExpired, TokenVerifier
from omega_ws.config import AuthConfig, Config, ConfigError

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
NOW = 1_700_000_000.0


def _auth(**values: Any) -> AuthConfig:
    return Config.from_mapping({"auth": values}).auth


def _hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return _rsa_key()


@pytest.fixture
def public_pem(private_key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
    path = tmp_path / "token.pub.pem"
    path.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def rs256(public_pem: Path) -> TokenVerifier:
    return TokenVerifier(_auth(token_public_key=str(public_pem)))


@pytest.fixture
def hs256() -> TokenVerifier:
    return TokenVerifier(_auth(token_secret=SECRET))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged_hs256(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token whose HMAC key is C{key} (the classic public-key-as-secret attack)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


# -- valid tokens -------------------------------------------------------------------


def test_hs256_valid_token(hs256: TokenVerifier) -> None:
    token = _hs256({"sub": "alice", "exp": int(NOW) + 60, "channels": ["a", "b"]})
    assert hs256.verify(token, NOW) == Identity("alice", NOW + 60, frozenset({"a", "b"}))
    assert hs256.enabled is True


def test_rs256_valid_token(rs256: TokenVerifier, private_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "bob", "exp": NOW + 1.5}, private_key, algorithm="RS256")
    identity = rs256.verify(token, NOW)
    assert identity == Identity(user="bob", expires_at=NOW + 1.5, channels=None)
    assert rs256.enabled is True


def test_optional_claims(hs256: TokenVerifier) -> None:
    assert hs256.verify(_hs256({"sub": "carol"}), NOW) == Identity("carol", None, None)
    assert hs256.verify(_hs256({}), NOW) == Identity("", None, None)
    identity = hs256.verify(_hs256({"sub": "", "channels": []}), NOW)
    assert identity == Identity("", None, frozenset())


def test_both_keys_configured(public_pem: Path, private_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(_auth(token_secret=SECRET, token_public_key=str(public_pem)))
    rs = jwt.encode({"sub": "r"}, private_key, algorithm="RS256")
    assert verifier.verify(_hs256({"sub": "h"}), NOW).user == "h"
    assert verifier.verify(rs, NOW).user == "r"
    with pytest.raises(InvalidToken):
        verifier.verify(_hs256({"sub": "h"}, secret="another-secret-also-long-enough-32b"), NOW)


# -- expiry -------------------------------------------------------------------------


@pytest.mark.parametrize("exp", [NOW, NOW - 1, 0])
def test_expired(hs256: TokenVerifier, exp: float) -> None:
    with pytest.raises(TokenExpired):
        hs256.verify(_hs256({"sub": "alice", "exp": exp}), NOW)


def test_expiry_uses_the_time_passed_in(hs256: TokenVerifier) -> None:
    token = _hs256({"sub": "alice", "exp": 1000})
    assert hs256.verify(token, 999.5).expires_at == 1000.0
    with pytest.raises(TokenExpired):
        hs256.verify(token, 1000.0)


def test_expired_is_an_invalid_token() -> None:
    assert issubclass(TokenExpired, InvalidToken)


# -- bad tokens -----------------------------------------------------------------------


def test_wrong_secret(hs256: TokenVerifier) -> None:
    token = _hs256({"sub": "alice"}, secret="not-the-secret-but-long-enough-xxxxx")
    with pytest.raises(InvalidToken) as raised:
        hs256.verify(token, NOW)
    assert type(raised.value) is InvalidToken


def test_tampered_payload(hs256: TokenVerifier) -> None:
    head, _, signature = _hs256({"sub": "alice"}).split(".")
    body = _b64(json.dumps({"sub": "mallory"}).encode())
    with pytest.raises(InvalidToken):
        hs256.verify(f"{head}.{body}.{signature}", NOW)


def test_rs256_wrong_key(rs256: TokenVerifier) -> None:
    token = jwt.encode({"sub": "bob"}, _rsa_key(), algorithm="RS256")
    with pytest.raises(InvalidToken):
        rs256.verify(token, NOW)


def test_hs256_token_against_rs256_key(rs256: TokenVerifier, public_pem: Path) -> None:
    with pytest.raises(InvalidToken):
        rs256.verify(_hs256({"sub": "x"}), NOW)
    with pytest.raises(InvalidToken):
        rs256.verify(_forged_hs256({"sub": "x"}, public_pem.read_bytes()), NOW)


def test_rs256_token_against_hs256_secret(
        hs256: TokenVerifier, private_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidToken):
        hs256.verify(jwt.encode({"sub": "x"}, private_key, algorithm="RS256"), NOW)


def test_none_algorithm(hs256: TokenVerifier, rs256: TokenVerifier) -> None:
    token = jwt.encode({"sub": "x"}, None, algorithm="none")
    for verifier in (hs256, rs256):
        with pytest.raises(InvalidToken):
            verifier.verify(token, NOW)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "...", "e30.e30.", "\u00e9.\u00e9.x"])
def test_garbage(hs256: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        hs256.verify(token, NOW)


@pytest.mark.parametrize("claims", [
    {"sub": 42},
    {"sub": None},
    {"sub": ["alice"]},
    {"sub": "alice", "exp": "tomorrow"},
    {"sub": "alice", "exp": True},
    {"sub": "alice", "exp": [NOW + 60]},
    {"sub": "alice", "channels": "a"},
    {"sub": "alice", "channels": ["a", 1]},
    {"sub": "alice", "channels": {"a": True}},
])
def test_bad_claim_types(hs256: TokenVerifier, claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken) as raised:
        hs256.verify(_hs256(claims), NOW)
    assert type(raised.value) is InvalidToken


# -- configuration ----------------------------------------------------------------------


def test_no_key_configured() -> None:
    verifier = TokenVerifier(_auth())
    assert verifier.enabled is False
    assert verifier.anonymous_allowed is True
    with pytest.raises(InvalidToken):
        verifier.verify(_hs256({"sub": "alice"}), NOW)


def test_anonymous_allowed_is_derived(public_pem: Path) -> None:
    assert TokenVerifier(_auth(token_secret=SECRET)).anonymous_allowed is False
    assert TokenVerifier(_auth(token_public_key=str(public_pem))).anonymous_allowed is False
    assert TokenVerifier(_auth(token_secret=SECRET, allow_anonymous=True)).anonymous_allowed
    assert TokenVerifier(_auth(allow_anonymous=False)).anonymous_allowed is False


def test_empty_secret_does_not_lock_everyone_out() -> None:
    """
    An empty secret is no key: with anonymous access derived, either tokens
    can be checked or anonymous clients are let in (or the config is refused).
    """
    try:
        verifier = TokenVerifier(_auth(token_secret=""))
    except ConfigError:  # refusing the configuration would be fine too
        return
    assert verifier.enabled or verifier.anonymous_allowed


# -- Identity -------------------------------------------------------------------------------


def test_identity_allows() -> None:
    assert Identity("u").allows("anything")
    limited = Identity("u", None, frozenset({"a", "b"}))
    assert limited.allows("a") and limited.allows("b")
    assert not limited.allows("c")
    assert not limited.allows("")
    assert not Identity("u", None, frozenset()).allows("a")
