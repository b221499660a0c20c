"""
The Centrifugo client protocol's JSON encoding, as C{centrifuge.py}
speaks it: error and close codes, replies with publications spliced in
as the bytes they were published as, and the pub push.
"""

from __future__ import annotations

from typing import Any, cast

from .broker.history import Publication
from .jsonutil import compact
from .wire import CloseReason, Prepared

__all__ = ["CLOSES", "PING", "Disconnect", "Raw", "ReplyError", "encode_pub_push",
           "encode_reply", "offset_of", "prepare_push", "push_bytes", "size_of"]

# Disconnect (close) codes: 3000-3499 the SDKs reconnect, 3500-3999 they don't.
SHUTDOWN, EXPIRED, SLOW, FORCE_RECONNECT, NO_PONG = 3001, 3005, 3008, 3011, 3012
INVALID_TOKEN, BAD_REQUEST, STALE = 3500, 3501, 3502

# Error codes in replies.
INTERNAL, UNAUTHORIZED, UNKNOWN_CHANNEL, PERMISSION_DENIED, METHOD_NOT_FOUND = (
    100, 101, 102, 103, 104)
ALREADY_SUBSCRIBED, LIMIT_EXCEEDED, BAD_REQUEST_ERROR, NOT_AVAILABLE, TOKEN_EXPIRED = (
    105, 106, 107, 108, 109)
TOO_MANY_REQUESTS, UNRECOVERABLE_POSITION = 111, 112

# Unsubscribe push codes: below 2500 the SDK stays unsubscribed.
UNSUBSCRIBE_SERVER = 2000


class ReplyError(Exception):
    """An error reply to one command; the connection stays up."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.temporary = temporary

    def as_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.temporary:
            error["temporary"] = True
        return error


class Disconnect(Exception):
    """End the connection with a Centrifugo disconnect code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _publication_json(publication: Publication) -> bytes:
    """
    C{{"data": <as published>, "offset": N}}; the data is not re-encoded,
    but line feeds (whitespace between JSON tokens: never inside a string)
    become spaces, since the SDKs split frames on them.
    """
    data = publication.data.replace(b"\n", b" ")
    return b'{"data":' + data + b',"offset":' + str(publication.offset).encode() + b"}"


def encode_pub_push(publication: Publication) -> bytes:
    return (b'{"push":{"channel":' + compact(publication.channel) + b',"pub":'
            + _publication_json(publication) + b"}}")


class Raw:
    """A reply body plus publications whose data is spliced in verbatim."""

    __slots__ = ("body", "publications")

    def __init__(self, body: dict[str, Any], publications: list[Publication]) -> None:
        self.body = body
        self.publications = publications


def size_of(publications: list[Publication]) -> int:
    return sum(len(p.data) for p in publications)


def offset_of(value: Any) -> int:
    """Offsets arrive as numbers, or as strings from 64-bit-safe encoders."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        # true is not 1, nor 2.5 two: a position the client never had.
        raise ReplyError(BAD_REQUEST_ERROR, "bad request")
    try:
        offset = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ReplyError(BAD_REQUEST_ERROR, "bad request") from None
    if offset < 0:
        raise ReplyError(BAD_REQUEST_ERROR, "bad request")
    return offset


def encode_reply(command_id: int, method: str, body: Any) -> bytes:
    """A reply; C{Raw} bodies get their publications spliced in without re-encoding."""
    if isinstance(body, Raw):
        head = compact(body.body)[:-1]
        publications = b",".join(_publication_json(p) for p in body.publications)
        separator = b"," if body.body else b""
        inner = head + separator + b'"publications":[' + publications + b"]}"
        prefix = b'{"id":' + str(command_id).encode() + b',"' + method.encode() + b'":'
        return prefix + inner + b"}"
    return compact({"id": command_id, method: body if body is not None else {}})


# How the Centrifuge wire ends a connection, for each reason: how, code,
# text, and whether the disconnect push goes first.
CLOSES: dict[CloseReason, tuple[str, int, str, bool]] = {
    # As for raw clients (docs/protocol-raw.md); the SDKs reconnect on codes below 3000.
    CloseReason.INACTIVE: ("close", 1000, "Inactive client", False),
    CloseReason.REPLACED: ("close", FORCE_RECONNECT, "replaced", True),
    CloseReason.EXPIRED: ("close", EXPIRED, "connection expired", True),
    CloseReason.SHUTDOWN: ("close", SHUTDOWN, "shutdown", True),
    CloseReason.SLOW: ("fail", SLOW, "slow", False),
    # A close frame with the code, so the SDK knows to reconnect; ends in ERROR.
    CloseReason.UNRESPONSIVE: ("fail", NO_PONG, "no pong", False),
}


def prepare_push(publication: Publication) -> Prepared:
    return Prepared(push_bytes(publication))


# The server ping, framed once.
PING = Prepared(b"{}")


def push_bytes(publication: Publication) -> bytes:
    """The pub push for C{publication}, encoded once and shared by every subscriber."""
    return cast(bytes, publication.encoded("centrifuge-json", encode_pub_push))
