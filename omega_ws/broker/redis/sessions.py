"""
Raw clients' sessions in Redis, so that a client can resume on any node.

A session is a hash: C{d} the session as JSON, C{o} the node that owns
it.  The node where the client's connection opens claims it (a session
with a C{refresh} is live here); while the connection lasts, the node
writes it again whenever it changed, at most a second late, and at least
every third of its TTL, and only while it still owns it: a node that lost
the client to another stops writing, and its last write at the close is
refused too.  So a node killed outright loses at most the last second of
positions, which the client then receives twice, never a gap.  Reading a
session (a handshake that may yet be refused) claims nothing.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..history import StreamPosition
from ..sessions import Session
from . import scripts
from .node import Node

__all__ = ["RedisSessions", "decode_session", "encode_session"]

_log = Logger()


def encode_session(session: Session) -> bytes:
    return json.dumps({
        "user": session.user,
        "positions": {c: [p.epoch, p.offset] for c, p in session.positions.items()},
        "counts": [session.message_count, session.error_count, session.reconnect_count],
        "disconnected_at": session.disconnected_at,
        "rapid": session.rapid_reconnects,
        "blocked_until": session.blocked_until,
    }, separators=(",", ":")).encode()


def decode_session(client_id: str, data: bytes) -> Session | None:
    """The session, or None if what Redis holds is not one (then it starts afresh)."""
    try:
        held: dict[str, Any] = json.loads(data)
        messages, errors, reconnects = held["counts"]
        return Session(
            client_id, user=held["user"],
            positions={c: StreamPosition(e, int(o)) for c, (e, o) in held["positions"].items()},
            message_count=int(messages), error_count=int(errors),
            reconnect_count=int(reconnects), disconnected_at=held["disconnected_at"],
            rapid_reconnects=int(held["rapid"]), blocked_until=float(held["blocked_until"]))
    except (ValueError, KeyError, TypeError):
        _log.warn("session {client_id} in Redis is unreadable; starting afresh",
                  client_id=client_id)
        return None


class RedisSessions:
    """The L{SessionStore} of the Redis broker."""

    def __init__(self, broker: Node) -> None:
        self._broker = broker
        # Sessions whose connection is live here: client id -> (session,
        # ttl, what was last written, when).
        self._live: dict[str, tuple[Session, float, bytes, float]] = {}

    @property
    def live_count(self) -> int:
        return len(self._live)

    def _key(self, client_id: str) -> tuple[Any, str]:
        broker = self._broker
        return broker.shard_for(client_id).commands, broker.keys.session(client_id)

    def get(self, client_id: str) -> Deferred[Session | None]:
        commands, key = self._key(client_id)
        return commands.execute("HGET", key, "d").addCallback(
            lambda data: None if data is None else decode_session(client_id, data))

    def put(self, session: Session, ttl: float) -> Deferred[None]:
        """
        Hold C{session}; while its connection is live (C{disconnected_at}
        None) it is written again as it changes.  Nothing is written once
        another node took it.
        """
        client_id = session.client_id
        held = self._live.get(client_id)
        claim = session.refresh is not None and (held is None or held[0] is not session)
        if session.refresh is not None:
            session.refresh()
            self._live[client_id] = (session, ttl, b"", 0.0)
        else:
            self._live.pop(client_id, None)
        return self._write(session, ttl, encode_session(session), claim).addCallback(
            lambda _: None)

    def _write(self, session: Session, ttl: float, data: bytes,
               claim: bool = False) -> Deferred[int]:
        commands, key = self._key(session.client_id)
        d = scripts.SESSION_PUT.call(commands.execute, [key],
                                     [self._broker.node_id, data, max(1, int(ttl)), int(claim)])
        return d.addCallback(self._written, session, ttl, data)

    def _written(self, owned: int, session: Session, ttl: float, data: bytes) -> int:
        client_id = session.client_id
        held = self._live.get(client_id)
        if held is not None and held[0] is session:
            if owned:
                self._live[client_id] = (session, ttl, data, self._broker.reactor.seconds())
            else:  # taken by another node: that node records it from now on
                del self._live[client_id]
        return owned

    def delete(self, client_id: str) -> Deferred[None]:
        self._live.pop(client_id, None)
        commands, key = self._key(client_id)
        return commands.execute("DEL", key).addCallback(lambda _: None)

    def expire(self, now: float) -> None:
        return None  # Redis expires them

    def flush(self) -> Deferred[None]:
        """
        Write the live sessions that changed since they were last written,
        and those written a third of their TTL ago (a live session must
        not expire).
        """
        now = self._broker.reactor.seconds()
        for session, ttl, written, written_at in list(self._live.values()):
            if session.refresh is not None:
                session.refresh()
            data = encode_session(session)
            if data != written or now - written_at > ttl / 3:
                self._write(session, ttl, data).addErrback(lambda _: None)
        return succeed(None)
