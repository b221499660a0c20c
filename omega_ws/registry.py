"""
The client registry: who is connected, in which state, with which counters.

Pure bookkeeping, no sockets: a connection is anything that satisfies
L{Connection}.  The WebSocket factory owns one L{Registry}; the heartbeat
and monitor sweeps walk it.  Every state transition is a structured log
event and is reported to the C{on_transition} hook (metrics).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Protocol

from twisted.logger import Logger

__all__ = ["ClientInfo", "Connection", "ConnectionState", "Registry"]

_log = Logger()


class ConnectionState(enum.Enum):
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECTING = "RECONNECTING"
    ERROR = "ERROR"


class ClientInfo:
    """What the registry knows of one client; counters survive a resume."""

    __slots__ = (
        "client_id",
        "peer",
        "transport",
        "state",
        "connected_at",
        "last_message",
        "message_count",
        "error_count",
        "reconnect_count",
        "channels",
        "ping_sent_at",
        "user",
        "expires_at",
    )

    def __init__(self, client_id: str, peer: str, transport: str, now: float) -> None:
        self.client_id = client_id
        self.peer = peer
        self.transport = transport
        self.state = ConnectionState.CONNECTED
        self.connected_at = now
        # Any frame received counts, pongs included.
        self.last_message = now
        self.message_count = 0
        self.error_count = 0
        self.reconnect_count = 0
        self.channels: set[str] = set()
        # When the oldest unanswered heartbeat went out, or None.
        self.ping_sent_at: float | None = None
        # From the connection token: the user ("" when anonymous) and its expiry.
        self.user = ""
        self.expires_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "client_id": self.client_id,
            "user": self.user,
            "state": self.state.value,
            "peer": self.peer,
            "transport": self.transport,
            "connected_at": self.connected_at,
            "last_message": self.last_message,
            "message_count": self.message_count,
            "error_count": self.error_count,
            "reconnect_count": self.reconnect_count,
            "channels": sorted(self.channels),
        }


class Connection(Protocol):
    """What the registry and the timers need of a live connection."""

    info: ClientInfo

    def send_heartbeat(self) -> None:
        """Send a ping in the connection's wire format."""

    def close_inactive(self) -> None:
        """Close cleanly because nothing was received for too long."""

    def drop_unresponsive(self) -> None:
        """Drop at once: a heartbeat went unanswered."""

    def close_for_shutdown(self) -> None:
        """Close with the wire format's "going away" code."""

    def close_replaced(self) -> None:
        """Close because a newer connection took over its client_id."""

    def close_expired(self) -> None:
        """Close because its token expired (and, for Centrifuge, was not refreshed)."""

    def close_with(self, code: int, reason: str) -> None:
        """Close with an application code (3000-4999), e.g. on the API's request."""

    def abort(self) -> None:
        """Drop the TCP connection without further ado."""


# (entry, old state or None for a new entry, new state)
TransitionHook = Callable[[ClientInfo, ConnectionState | None, ConnectionState], None]


class Registry:
    """Live connections by C{client_id}, and the state machine of their entries."""

    def __init__(self, on_transition: TransitionHook | None = None) -> None:
        self._live: dict[str, Connection] = {}
        self._on_transition = on_transition

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Connection]:
        """A snapshot: connections may close while the caller iterates."""
        return iter(tuple(self._live.values()))

    def get(self, client_id: str) -> Connection | None:
        return self._live.get(client_id)

    def add(self, connection: Connection) -> Connection | None:
        """
        Register a connection that just opened, in its info's state.
        Returns the connection it replaces (same C{client_id}), if any; the
        caller closes that one.
        """
        info = connection.info
        previous = self._live.get(info.client_id)
        self._live[info.client_id] = connection
        _log.info(
            "client {client_id} {state} from {peer} ({transport})",
            client_id=info.client_id,
            state=info.state.value,
            peer=info.peer,
            transport=info.transport,
        )
        if self._on_transition is not None:
            self._on_transition(info, None, info.state)
        return previous

    def transition(self, connection: Connection, state: ConnectionState, reason: str) -> None:
        """Move a connection's entry to C{state}; closed states leave the live set."""
        info = connection.info
        old = info.state
        if old is state:
            return
        info.state = state
        if state in (ConnectionState.DISCONNECTED, ConnectionState.ERROR):
            if self._live.get(info.client_id) is connection:
                del self._live[info.client_id]
        _log.info(
            "client {client_id} {old_state} -> {state}: {reason}",
            client_id=info.client_id,
            old_state=old.value,
            state=state.value,
            reason=reason,
        )
        if self._on_transition is not None:
            self._on_transition(info, old, state)

    def counts(self) -> dict[tuple[str, str], int]:
        """Live connections by (transport, state)."""
        counts: dict[tuple[str, str], int] = {}
        for connection in self._live.values():
            key = (connection.info.transport, connection.info.state.value)
            counts[key] = counts.get(key, 0) + 1
        return counts
