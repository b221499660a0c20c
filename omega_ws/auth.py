"""
Connection tokens: JWTs signed with an HS256 secret or an RS256 key pair,
as Centrifugo uses them.

Claims: C{sub} (the user; may be empty), C{exp} (optional expiry, seconds
since the epoch), C{channels} (optional list of channels the token allows;
absent means all).  Raw clients pass the token as C{?token=} or
C{Authorization: Bearer}; Centrifuge-protocol clients in C{connect} and
C{refresh}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jwt

from .config import AuthConfig

__all__ = ["Identity", "InvalidToken", "TokenExpired", "TokenVerifier"]


class InvalidToken(Exception):
    """The token is malformed, badly signed, or its claims are wrong."""


class TokenExpired(InvalidToken):
    """The token was valid but its C{exp} has passed."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    expires_at: float | None = None
    channels: frozenset[str] | None = None

    def allows(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels


ANONYMOUS = Identity("")


class TokenVerifier:
    """Checks tokens against the configured key; C{enabled} is False without one."""

    def __init__(self, config: AuthConfig) -> None:
        self.anonymous_allowed = config.anonymous_allowed
        self._keys: list[tuple[str | bytes, str]] = []
        if config.token_secret:
            self._keys.append((config.token_secret, "HS256"))
        if config.token_public_key:
            self._keys.append((Path(config.token_public_key).read_bytes(), "RS256"))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str, now: float) -> Identity:
        """
        The identity in C{token}.
        @raise TokenExpired: its C{exp} has passed.
        @raise InvalidToken: anything else wrong, or no key is configured.
        """
        if not self._keys:
            raise InvalidToken("no token key is configured")
        if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode
            raise InvalidToken("not a JWT")
        claims = None
        for key, algorithm in self._keys:
            try:
                # Times are checked below against the injected clock, not time.time().
                claims = jwt.decode(token, key, algorithms=[algorithm],
                                    options={"verify_exp": False, "verify_nbf": False,
                                             "verify_iat": False, "require": []})
                break
            except jwt.InvalidTokenError as e:
                error = e
        if claims is None:
            raise InvalidToken(str(error))
        sub = claims.get("sub", "")
        exp = claims.get("exp")
        channels = claims.get("channels")
        if not isinstance(sub, str):
            raise InvalidToken("sub must be a string")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
            raise InvalidToken("exp must be a number")
        if channels is not None and not (
                isinstance(channels, list) and all(isinstance(c, str) for c in channels)):
            raise InvalidToken("channels must be a list of strings")
        if exp is not None and exp <= now:
            raise TokenExpired("token expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now:
            raise TokenExpired("token not valid yet")  # as Centrifugo: 109, get a new one
        return Identity(sub, float(exp) if exp is not None else None,
                        frozenset(channels) if channels is not None else None)
