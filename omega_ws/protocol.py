"""
The WebSocket layer and the factory that owns the client registry.

L{OmegaProtocol} is one connection: it enforces the handshake limits
(request-head size, origins, per-address limits), keeps the connection's
L{ClientInfo} and its registry entry, writes through its L{Outbox}, and
hands frames to the L{Wire} chosen by the request path:
C{/connection/websocket} speaks the Centrifuge client protocol
(C{centrifuge.py}), any other path the raw protocol (C{raw.py}).  To its
wire it is a L{Link}; to the registry and the timers a L{Connection}.
Every safety-related Autobahn option is set in C{safety.py}; every reach
into Autobahn's or Twisted's internals is in C{_compat.py}.  The wire
protocols are documented in C{docs/}.
"""

from __future__ import annotations

import os
from typing import Any, cast
from typing import Protocol as TypingProtocol

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _compat
from .addresses import address_key
from .broker import BrokerUnavailable
from .closing import close_reason
from .config import Config
from .metrics import Metrics
from .outbox import FlushScheduler, Outbox, close_without_reset, unsent_bytes
from .registry import ClientInfo, ConnectionState, Registry
from .wire import CloseReason, Prepared, Wire

__all__ = ["OmegaProtocol", "Server"]

_log = Logger()

# Bytes parsed after our close frame while looking for the peer's reply.
_INPUT_AFTER_CLOSE = 16384
_HTTP_REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "path",
                 409: "client_id_conflict", 426: "not_websocket", 429: "reconnecting_too_often",
                 431: "header_too_large", 500: "internal", 503: "capacity"}
# Refusals that share a status with another are told apart by their text.
_REFUSAL_LABELS = {"Broker Unavailable": "broker_unavailable"}
_HANDSHAKE_LEFTOVERS = ("http_request_data", "http_response_data", "http_headers",
                       "http_status_line", "http_request_uri", "http_request_params",
                       "websocket_extensions", "websocket_protocols")
_KNOWN_CLOSE_CODES = frozenset(
    [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013, 4000, 4001, 4008,
     3001, 3005, 3008, 3010, 3011, 3012, 3500, 3501, 3502, 3503])


class Server(TypingProtocol):
    """What a connection needs of its factory (C{factory.py}'s L{OmegaServerFactory})."""

    config: Config
    metrics: Metrics
    clock: IReactorTime
    registry: Registry
    flusher: FlushScheduler
    per_ip: dict[str, int]
    connections: set[OmegaProtocol]

    def make_wire(self, protocol: OmegaProtocol, path: str) -> Wire: ...

    def origin_allowed(self, origin: str) -> bool: ...

    def connection_gone(self, protocol: OmegaProtocol) -> None: ...


@implementer(IHalfCloseableProtocol)
class OmegaProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection, whatever its wire format: handshake limits,
    origins, per-address limits, output and the registry entry are kept
    here; the L{Wire} chosen by the path does the rest.
    """

    info: ClientInfo
    wire: Wire | None = None
    outbox: Outbox | None = None
    # The connection's permessage-deflate state (fixed by the handshake), or None.
    _deflate: Any = None
    _ip: str | None = None
    _retry_after: int | None = None
    _error_counted = False
    _over_ip_limit = False
    _fragments = 0  # frames of the message being received
    _input_after_close = 0  # bytes received since we sent our close frame
    # The payload of the heartbeat ping not answered yet: only its pong counts.
    ping_payload: bytes | None = None
    # How many of the bytes sent the peer's TCP had acknowledged when that was
    # last knowable (the close); None until then, or if it never was.
    received_at_close: int | None = None

    @property
    def omega(self) -> Server:
        return cast(Server, self.factory)

    # -- handshake ---------------------------------------------------------

    def processHandshake(self) -> None:
        if self._over_ip_limit:
            self.failHandshake("Too Many Connections From This Address", 503)
            return
        # Autobahn buffers the request head without bound; cap it.
        limit = self.omega.config.server.max_handshake_size
        head = _compat.request_head(self) or b""
        end = head.find(b"\r\n\r\n")
        if len(head) > limit if end < 0 else end + 4 > limit:
            self.failHandshake("Request Header Fields Too Large", 431)
            return
        super().processHandshake()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        self.omega.metrics.handshake_refusals.labels(
            _REFUSAL_LABELS.get(reason) or _HTTP_REASONS.get(code, str(code))).inc()
        if code in (429, 503) and self._retry_after is not None:
            responseHeaders = [*(responseHeaders or []), ("Retry-After", str(self._retry_after))]
        super().failHandshake(reason, code, responseHeaders)

    def refuse_reconnects(self, retry_after: int) -> ConnectionDeny:
        """HTTP 429 with C{Retry-After}, for a wire to raise from C{on_connect}."""
        self._retry_after = retry_after
        return ConnectionDeny(429, "Too Many Reconnects")

    # Autobahn takes a Deferred from onConnect too (txaio.as_future).
    def onConnect(  # type: ignore[override]
        self, request: ConnectionRequest
    ) -> Deferred[None] | str | None:
        try:
            omega = self.omega
            origin = request.headers.get("origin")
            if origin is not None and not omega.origin_allowed(origin):
                raise ConnectionDeny(403, "Origin Not Allowed")
            self.wire = omega.make_wire(self, request.path)
            result = self.wire.on_connect(request)
        except ConnectionDeny:
            raise
        except Exception:
            _log.failure("onConnect failed for {peer}", peer=request.peer)
            raise ConnectionDeny(500, "Internal Server Error") from None
        if isinstance(result, Deferred):
            result.addErrback(self._connect_failed, request.peer)
        return result

    def _connect_failed(self, failure: Failure, peer: str) -> Failure:
        if failure.check(BrokerUnavailable):
            # A session could not be read: the client should come back soon.
            _log.warn("handshake from {peer} refused: {error}", peer=peer,
                      error=str(failure.value))
            self._retry_after = 1
            raise ConnectionDeny(503, "Broker Unavailable")
        if not failure.check(ConnectionDeny):
            _log.failure("onConnect failed for {peer}", failure, peer=peer)
            raise ConnectionDeny(500, "Internal Server Error")
        return failure

    # -- open connection ---------------------------------------------------

    def onOpen(self) -> None:
        try:
            assert self.wire is not None
            omega = self.omega
            transport = cast(IConsumer, self.transport)
            self.outbox = Outbox(cast(ITransport, transport), omega.flusher,
                                 omega.config.server.max_queue_size, self._slow_consumer,
                                 self.wire.written)
            # The transport pauses the outbox when its own buffer is full.
            transport.registerProducer(self.outbox, True)
            # The handshake is done: what it kept is dead weight on idle connections.
            for name in _HANDSHAKE_LEFTOVERS:
                self.__dict__.pop(name, None)
            _compat.drop_send_queue(self)
            self._deflate = _compat.compression(self)
            self.wire.on_open()
        except Exception:
            _log.failure("onOpen failed for {peer}", peer=self.peer)
            _compat.fail_connection(self, 1011, "Internal error")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        info = self.info
        info.last_message = self.omega.clock.seconds()
        info.message_count += 1
        if self._deflate is not None:
            _compat.release_deflate(self._deflate, outgoing=False)
        try:
            assert self.wire is not None
            self.wire.on_message(payload, isBinary)
        except Exception:
            # A bug must cost this connection only, with a proper close code.
            _log.failure("handling a message from {client_id} failed",
                         client_id=info.client_id)
            _compat.fail_connection(self, 1011, "Internal error")

    def dataReceived(self, data: bytes) -> None:
        if self.state == self.STATE_CLOSING and self.closedByMe:
            # Waiting for the close reply: a few frames may still be in flight,
            # but a peer that keeps sending (a flood of tiny frames, say) is
            # not worth parsing.  Stop reading it; the close-handshake timeout
            # ends the connection, with a FIN that browsers count as clean.
            self._input_after_close += len(data)
            if self._input_after_close > _INPUT_AFTER_CLOSE:
                if self.transport is not None:
                    cast(IPushProducer, self.transport).pauseProducing()
                return
        super().dataReceived(data)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        # One-byte fragments cost a frame's parsing and an object each: cap them.
        self._fragments += 1
        if (self._fragments > self.omega.config.server.max_message_fragments
                and not self.failedByMe):
            self.reject(1009, "Too many fragments", "too_many_fragments")
            _compat.discard_input(self)  # the rest of what was read is more of the same
            return
        super().onMessageFrameBegin(length)

    def onPing(self, payload: bytes) -> None:
        self.info.last_message = self.omega.clock.seconds()
        # The pong goes through the outbox: a peer that pings and never reads
        # is a slow consumer like any other, not a way around max_queue_size.
        if self.state == self.STATE_OPEN and self.outbox is not None:
            self.outbox.put(b"\x8a" + bytes([len(payload)]) + payload)

    def onPong(self, payload: bytes) -> None:
        self.info.last_message = self.omega.clock.seconds()
        if self.ping_payload is not None and payload == self.ping_payload:
            # Only the answer to our own ping: an unsolicited pong proves nothing.
            self.ping_payload = None
            assert self.wire is not None
            self.wire.on_pong(payload)

    # -- the wire's Link ----------------------------------------------------------

    @property
    def peer_host(self) -> str | None:
        return getattr(self.transport and self.transport.getPeer(), "host", None)

    def send_ping(self) -> None:
        """A heartbeat ping whose payload the pong must echo."""
        payload = self.ping_payload
        if payload is None:
            payload = self.ping_payload = os.urandom(8)
        self.sendPing(payload)

    def send_prepared(self, prepared: Prepared, mark: Any = None) -> None:
        """Queue a frame made once for many connections (see L{Outbox})."""
        if self.state != self.STATE_OPEN:
            return
        outbox = self.outbox
        if outbox is None:
            return
        deflate = self._deflate
        if deflate is None:
            outbox.put(prepared.frame, mark)
        elif outbox.admit(len(prepared.payload)):
            # Compression negotiated: Autobahn compresses per connection, and
            # the outbox only keeps count while the transport is full.
            self.sendMessage(prepared.payload, isBinary=False)
            _compat.release_deflate(deflate, outgoing=True)
            if mark is not None and self.wire is not None:
                self.wire.written(mark)

    def send_text(self, payload: bytes) -> None:
        """Queue one text message for this connection only."""
        self.send_prepared(Prepared(payload))

    @property
    def bytes_sent(self) -> int:
        return self.outbox.sent if self.outbox is not None else 0

    def unacked_bytes(self) -> int | None:
        """
        Of L{bytes_sent}, those the peer's TCP has not acknowledged: what the
        transport still holds plus the kernel's send queue (frames still in
        the outbox are not sent yet, so not counted); None when the kernel
        cannot be asked (the socket is gone).
        """
        return unsent_bytes(self.transport)

    def _note_received(self) -> None:
        """
        What the peer has, taken once, at the first moment the connection is
        known to end: before anything more (a close frame) is sent.
        """
        if self.received_at_close is None:
            unacked = self.unacked_bytes()
            if unacked is not None:
                self.received_at_close = self.bytes_sent - unacked

    def close(self, code: int, reason: str) -> None:
        """Close cleanly with C{code} (1000, 1001 or 3000-4999)."""
        if self.state == self.STATE_OPEN:
            # sendClose() refuses 1001; the close frame itself does not.
            self.sendCloseFrame(code, close_reason(reason), isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.abort()

    def fail(self, code: int, reason: str) -> None:
        """Close for the peer's failure (slow, silent): its entry ends in ERROR."""
        _compat.fail_connection(self, code, reason)

    def reject(self, code: int, reason: str, metric_reason: str) -> None:
        """Close for bad input: counted, and the entry ends in ERROR."""
        self.info.error_count += 1
        self._error_counted = True
        self.omega.metrics.invalid_messages.labels(metric_reason).inc()
        _compat.fail_connection(self, code, reason)

    def abort(self) -> None:
        self.wasClean = False
        self.dropConnection(abort=True)

    # -- writing and closing ------------------------------------------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Frames written around the outbox (close frames, compressed messages)
        # count towards the bytes sent, which place a session's position.
        if self.outbox is not None:
            self.outbox.sent += len(data)
        super().sendData(data, sync, chopsize)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        # What was queued goes out before the close (even to a paused transport:
        # it buffers), and nothing after it.
        if self.outbox is not None:
            self.outbox.flush(force=True)
            self.outbox.close()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        if self.state == self.STATE_CLOSING and self.received_at_close is None:
            # The answer to our close: the peer read everything before it.
            self.received_at_close = self.bytes_sent
        else:
            # The peer closes: what had not reached it yet may be dropped.
            self._note_received()
        return super().onCloseFrame(code, reasonRaw)

    def dropConnection(self, abort: bool = False) -> None:
        if self.state != self.STATE_CLOSED:
            self._note_received()
        if self.wasClean:
            # The closing handshake is done: end TCP with a FIN, not a reset,
            # so that browsers report a clean close.
            abort = False
        super().dropConnection(abort)

    def _closeConnection(self, abort: bool = False) -> None:
        # A peer that stopped reading (slow, silent) keeps what its kernel
        # already took: a reset would make it discard that too.
        if not (abort and close_without_reset(self.transport)):
            super()._closeConnection(abort)

    # IHalfCloseableProtocol: the peer's FIN, while the socket is still ours.
    def readConnectionLost(self) -> None:
        # The last moment the kernel can say what never reached the peer.
        self._note_received()
        if not close_without_reset(self.transport) and self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass  # omega-ws never half-closes its side

    def _slow_consumer(self) -> None:
        omega = self.omega
        omega.metrics.slow_consumer_drops.inc()
        _log.warn("client {client_id} is a slow consumer: more than {limit} bytes unsent; "
                  "closing it", client_id=self.info.client_id,
                  limit=omega.config.server.max_queue_size)
        self.wasNotCleanReason = "slow consumer"
        if self.wire is not None:
            self.wire.close(CloseReason.SLOW)

    # -- the registry's Connection ----------------------------------------------

    def send_heartbeat(self) -> None:
        if self.state == self.STATE_OPEN and self.wire is not None:
            self.wire.send_heartbeat()

    def _close_for(self, reason: CloseReason) -> None:
        if self.wire is not None and self.state == self.STATE_OPEN:
            self.wire.close(reason)
        elif self.state == self.STATE_CONNECTING:
            self.abort()

    def close_inactive(self) -> None:
        self._close_for(CloseReason.INACTIVE)

    def close_replaced(self) -> None:
        self._close_for(CloseReason.REPLACED)

    def close_expired(self) -> None:
        self._close_for(CloseReason.EXPIRED)

    def close_for_shutdown(self) -> None:
        self._close_for(CloseReason.SHUTDOWN)

    def drop_unresponsive(self) -> None:
        self.wasNotCleanReason = "no pong within heartbeat.ping_timeout"
        if self.wire is not None and self.state == self.STATE_OPEN:
            self.wire.close(CloseReason.UNRESPONSIVE)
        else:
            self.abort()

    def close_with(self, code: int, reason: str) -> None:
        if self.wire is not None:
            self.wire.close_with(code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        info = getattr(self, "info", None)
        if info is None or self.wire is None:  # the handshake never completed
            return
        omega = self.omega
        sent = self.localCloseCode if (self.closedByMe or self.failedByMe) else None
        close_code = sent or self.remoteCloseCode or 1006
        # Clients choose their close codes: keep the metric's label set small.
        omega.metrics.closes.labels(str(close_code) if close_code in _KNOWN_CLOSE_CODES
                                    else "other").inc()
        try:
            self.wire.on_close(wasClean, close_code)
        finally:  # the registry entry must end whatever the wire did
            if self.failedByMe and not self._error_counted:
                # Autobahn's own checks (oversize, bad UTF-8 text, protocol errors).
                info.error_count += 1
            abnormal = not wasClean or self.failedByMe
            new_state = ConnectionState.ERROR if abnormal else ConnectionState.DISCONNECTED
            why = self.wasNotCleanReason if not wasClean else f"closed with {close_code}"
            omega.registry.transition(self, new_state, why or "closed")

    # -- transport --------------------------------------------------------------

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        try:
            super().connectionLost(reason)
        finally:
            omega = self.omega
            if self._ip is not None:
                remaining = omega.per_ip.get(self._ip, 1) - 1
                if remaining > 0:
                    omega.per_ip[self._ip] = remaining
                else:
                    omega.per_ip.pop(self._ip, None)
                self._ip = None
            omega.connection_gone(self)

    def _connectionMade(self) -> None:
        # See there: a third of a handshake.
        _compat.call_without_pformat(super()._connectionMade)

    def connectionMade(self) -> None:
        super().connectionMade()
        omega = self.omega
        omega.connections.add(self)
        # Counted from the first byte: bare sockets from one address count too.
        server = omega.config.server
        limit = server.max_connections_per_ip
        host = self.peer_host
        ip = address_key(host, server.ipv6_prefix) if limit and host is not None else None
        if ip is not None:
            count = omega.per_ip.get(ip, 0)
            if count >= limit:
                self._over_ip_limit = True  # refused at its first bytes
            else:
                omega.per_ip[ip] = count + 1
                self._ip = ip
