"""
The seam between the WebSocket layer and the wire formats.

A wire (raw, Centrifuge) turns frames into hub calls and publications
into frames.  It is built from a L{WireContext}, what every connection of
one server shares (the hub, the clock, the configuration, tokens, metrics,
the registry, the server API), and a L{Link}, the small handle of its own
connection: send a frame, close with a code, the connection's client info.
It never sees the Autobahn factory or protocol, so a test can build one
with a fake link and a L{twisted.internet.task.Clock}.

Why a server closes a connection is a L{CloseReason}; each wire maps every
reason to its own close code and text in one table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .auth import TokenVerifier
from .config import Config
from .hub import Hub
from .limits import PublishLimit
from .metrics import Metrics
from .registry import ClientInfo, Connection, Registry

if TYPE_CHECKING:
    from .server_api import ServerApi

__all__ = ["CloseReason", "Link", "Prepared", "RpcHandler", "Wire", "WireContext"]

# rpc handler: (client info, data) -> result data, or a Deferred of it.
RpcHandler = Callable[[ClientInfo, Any], Any]


class CloseReason(enum.Enum):
    """Why the server ends a connection; each wire has its code and text for each."""

    INACTIVE = "inactive"  # nothing received for monitor.idle_timeout
    REPLACED = "replaced"  # a newer connection took its client_id
    EXPIRED = "expired"  # its token expired (and was not refreshed)
    SHUTDOWN = "shutdown"  # the server stops
    SLOW = "slow"  # more than server.max_queue_size unsent
    UNRESPONSIVE = "unresponsive"  # no answer to a heartbeat


class Link(Connection, Protocol):
    """A wire's handle on its connection (also the registry's L{Connection})."""

    info: ClientInfo
    peer: str | None  # as Autobahn names it, e.g. "tcp4:127.0.0.1:41746"

    @property
    def peer_host(self) -> str | None:
        """The client's address (no port), or None when unknown."""

    def send_prepared(self, prepared: Prepared, mark: Any = None) -> None:
        """Queue a frame made once for many connections; C{mark} comes back to C{written}."""

    def send_text(self, payload: bytes) -> None:
        """Queue one text message for this connection only."""

    def send_ping(self) -> None:
        """A WebSocket ping whose pong answers the heartbeat."""

    def close(self, code: int, reason: str) -> None:
        """Close cleanly with C{code} (1000, 1001, 3000-4999); the entry ends DISCONNECTED."""

    def fail(self, code: int, reason: str) -> None:
        """Close for the peer's failure (slow, silent): the entry ends in ERROR."""

    def reject(self, code: int, reason: str, metric_reason: str) -> None:
        """Close for bad input: counted, and the entry ends in ERROR."""

    def abort(self) -> None:
        """End the connection without a close frame."""

    def refuse_reconnects(self, retry_after: int) -> ConnectionDeny:
        """HTTP 429 with C{Retry-After}, to raise from C{on_connect}."""

    @property
    def bytes_sent(self) -> int:
        """Bytes handed to the transport so far."""

    def unacked_bytes(self) -> int | None:
        """Bytes sent that the peer's TCP has not acknowledged (None: unknown)."""

    @property
    def received_at_close(self) -> int | None:
        """Of L{bytes_sent}, how many the peer had when the connection ended, if known."""


@dataclass(eq=False)
class WireContext:
    """What every wire of one server shares; built once by the factory."""

    hub: Hub
    clock: IReactorTime
    config: Config
    tokens: TokenVerifier
    metrics: Metrics
    registry: Registry
    # What a connection's publications draw from: (its link, its user) -> limit.
    publish_limit: Callable[[Link, str], PublishLimit | None]
    api: ServerApi | None = None
    rpc_handlers: dict[str, RpcHandler] = field(default_factory=dict)


class Wire(Protocol):
    """One wire format spoken over an open WebSocket."""

    def on_connect(self, request: ConnectionRequest) -> Deferred[None] | str | None:
        """
        Check the handshake; raise ConnectionDeny to refuse it.  Returns the
        subprotocol to select, or a Deferred that fires when the checks are done.
        """

    def on_open(self) -> None: ...

    def on_message(self, payload: bytes, is_binary: bool) -> None: ...

    def on_pong(self, payload: bytes) -> None: ...

    def on_close(self, was_clean: bool, close_code: int) -> None: ...

    def written(self, mark: Any) -> None:
        """The last frame queued with C{mark} went to the transport."""

    def send_heartbeat(self) -> None: ...

    def close(self, reason: CloseReason) -> None:
        """End the connection for C{reason}, with this wire's code and text."""

    def close_with(self, code: int, reason: str) -> None:
        """End the connection with an application code (the server API's disconnect)."""


class Prepared:
    """
    A text message framed once for many connections: C{frame} is the
    unmasked WebSocket frame, C{payload} the message (for connections that
    compress, which frame it themselves).
    """

    __slots__ = ("payload", "frame")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        length = len(payload)
        if length < 126:
            header = bytes((0x81, length))
        elif length < 65536:
            header = bytes((0x81, 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((0x81, 127)) + length.to_bytes(8, "big")
        self.frame = header + payload
