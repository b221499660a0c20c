"""
Server-side sessions of raw clients that name themselves with
C{?client_id=}: what they last received per channel, their counters, and
the reconnect threshold.  Pure bookkeeping; the store sits behind the
broker, so a session can follow its client to another node.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from .history import StreamPosition

__all__ = ["Admission", "MemorySessions", "Session", "SessionStore", "admit"]


@dataclass(slots=True)
class Session:
    client_id: str
    user: str = ""
    # Last publication delivered, per channel.
    positions: dict[str, StreamPosition] = field(default_factory=dict)
    message_count: int = 0
    error_count: int = 0
    reconnect_count: int = 0
    disconnected_at: float | None = None
    # Reconnects in a row, each within reconnect.delay of the disconnect before.
    rapid_reconnects: int = 0
    blocked_until: float = 0.0
    # Set by the live connection: brings C{positions} up to what the client
    # is known to have received; a store that records the session calls it.
    refresh: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    retry_after: int = 0


def admit(session: Session, now: float, delay: float, max_attempts: int,
          replacing: bool = False) -> Admission:
    """
    May this client_id connect again now?  More than C{max_attempts}
    reconnects in a row, each within C{delay} seconds of the previous
    disconnect, blocks it for C{delay} seconds (0 attempts: no limit).  A
    connection that replaces a live one (C{replacing}) counts as a
    reconnect at once: opening the same id again and again without closing
    is no way around the threshold.  Updates C{session}'s threshold state.
    """
    if now < session.blocked_until:
        return Admission(False, max(1, math.ceil(session.blocked_until - now)))
    if replacing or (session.disconnected_at is not None
                     and now - session.disconnected_at <= delay):
        session.rapid_reconnects += 1
    else:
        session.rapid_reconnects = 0
    if max_attempts and session.rapid_reconnects > max_attempts:
        session.blocked_until = now + delay
        session.rapid_reconnects = 0
        return Admission(False, max(1, math.ceil(delay)))
    return Admission(True)


class SessionStore(Protocol):
    def get(self, client_id: str) -> Deferred[Session | None]:
        """The held session, or None."""

    def put(self, session: Session, ttl: float) -> Deferred[None]:
        """Hold C{session} for C{ttl} seconds."""

    def delete(self, client_id: str) -> Deferred[None]:
        """Forget it."""

    def expire(self, now: float) -> None:
        """Drop sessions past their TTL (the monitor calls this)."""


class MemorySessions:
    """
    Sessions in this process, each with its expiry time; at most
    C{max_sessions}, past which the least recently stored one is dropped
    (and counted in C{evicted}).
    """

    def __init__(self, clock: IReactorTime, max_sessions: int = 100000) -> None:
        self._clock = clock
        self._max = max_sessions
        self._sessions: OrderedDict[str, tuple[Session, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _now(self) -> float:
        return self._clock.seconds()

    def get(self, client_id: str) -> Deferred[Session | None]:
        held = self._sessions.get(client_id)
        if held is None or held[1] <= self._now():
            return succeed(None)
        return succeed(held[0])

    def put(self, session: Session, ttl: float) -> Deferred[None]:
        sessions = self._sessions
        sessions[session.client_id] = (session, self._now() + ttl)
        sessions.move_to_end(session.client_id)
        while len(sessions) > self._max:
            sessions.popitem(last=False)
            self.evicted += 1
        return succeed(None)

    def delete(self, client_id: str) -> Deferred[None]:
        self._sessions.pop(client_id, None)
        return succeed(None)

    def expire(self, now: float) -> None:
        for client_id, (_, expires) in list(self._sessions.items()):
            if expires <= now:
                del self._sessions[client_id]
