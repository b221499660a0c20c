"""
The raw WebSocket protocol (the seed's protocol) and the factory that owns
the client registry.

Wire protocol, raw flavour (details and examples in C{docs/protocol-raw.md}):

  - Connect to C{ws://host:port/<channel>}; C{/} is C{channels.default}.
    Channel names are 1-255 characters of C{[A-Za-z0-9_.:@-]}; any other
    path is refused at the handshake with HTTP 404.  No subprotocol.
  - Query parameters: C{client_id} names the client in the registry (and,
    once sessions land, lets it resume).
  - Every text frame, or binary frame holding UTF-8, must be one JSON
    object.  It is published on the connection's channel and delivered
    byte for byte, as a text frame, to every subscriber of that channel,
    the sender included.
  - Bad input closes that connection only: not JSON or not an object,
    1003 "Invalid message format"; invalid UTF-8, 1007; larger than
    C{server.max_message_size}, 1009; publishing while
    C{channels.allow_client_publish} is false, 1008.
  - The server pings every C{heartbeat.ping_interval} seconds; no pong
    within C{heartbeat.ping_timeout} and the connection is dropped.  No
    frame for C{monitor.idle_timeout} seconds: 1000 "Inactive client".
    Shutdown: 1001 "going away".  Replaced by a newer connection with the
    same C{client_id}: 4000 "replaced".

The protocol only parses, checks and dispatches to the hub; the factory
sets every safety-related Autobahn option in L{apply_limits}.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .broker import Publication
from .config import Config, valid_channel
from .hub import Hub
from .limits import TokenBucket
from .metrics import Metrics
from .registry import ClientInfo, ConnectionState, Registry

__all__ = ["OmegaServerFactory", "RawProtocol"]

_log = Logger()

CLOSE_HANDSHAKE_TIMEOUT = 2.0
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}\Z")

# Close codes of the raw protocol.
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION = (
    1000, 1001, 1003, 1007, 1008)
REPLACED = 4000
_HTTP_REASONS = {400: "bad_request", 403: "origin", 404: "path", 426: "not_websocket",
                 431: "header_too_large", 500: "internal", 503: "capacity"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(payload: bytes) -> dict[str, Any] | None:
    """The JSON object in C{payload} (UTF-8), or None if it is anything else."""
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _origin_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(
        "|".join(re.escape(p).replace(r"\*", ".*") for p in patterns), re.IGNORECASE
    )


class RawProtocol(WebSocketServerProtocol):
    """One raw-protocol connection; owns its L{ClientInfo} (its state)."""

    info: ClientInfo
    _channel: str
    _client_id: str
    _ip: str | None = None
    _bucket: TokenBucket | None = None

    @property
    def _omega(self) -> OmegaServerFactory:
        return cast(OmegaServerFactory, self.factory)

    # -- handshake ---------------------------------------------------------

    def processHandshake(self) -> None:
        # Autobahn buffers the request head without bound; cap it.
        limit = self._omega.config.server.max_handshake_size
        end = self.data.find(b"\r\n\r\n")
        if len(self.data) > limit if end < 0 else end + 4 > limit:
            self.failHandshake("Request Header Fields Too Large", 431)
            return
        super().processHandshake()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        self._omega.metrics.handshake_refusals.labels(
            _HTTP_REASONS.get(code, str(code))).inc()
        super().failHandshake(reason, code, responseHeaders)

    def onConnect(self, request: ConnectionRequest) -> None:
        try:
            self._check_request(request)
        except ConnectionDeny:
            raise
        except Exception:
            _log.failure("onConnect failed for {peer}", peer=request.peer)
            raise ConnectionDeny(500, "Internal Server Error") from None

    def _check_request(self, request: ConnectionRequest) -> None:
        omega = self._omega
        server = omega.config.server
        path = request.path
        channel = omega.config.channels.default if path == "/" else path[1:]
        if not valid_channel(channel):
            raise ConnectionDeny(404, "Not Found")
        origin = request.headers.get("origin")
        if origin is not None and not omega.origin_allowed(origin):
            raise ConnectionDeny(403, "Origin Not Allowed")
        client_id = request.params.get("client_id", [None])[0]
        if client_id is None:
            client_id = uuid.uuid4().hex
        elif not _CLIENT_ID_RE.match(client_id):
            raise ConnectionDeny(400, "Invalid client_id")
        ip: str | None = getattr(self.transport and self.transport.getPeer(), "host", None)
        limit = server.max_connections_per_ip
        if limit and ip is not None and omega.per_ip.get(ip, 0) >= limit:
            raise ConnectionDeny(503, "Too Many Connections From This Address")
        self._channel = channel
        self._client_id = client_id
        if ip is not None:
            omega.per_ip[ip] = omega.per_ip.get(ip, 0) + 1
            self._ip = ip

    # -- open connection ---------------------------------------------------

    def onOpen(self) -> None:
        try:
            omega = self._omega
            self.info = ClientInfo(self._client_id, str(self.peer), "raw", omega.clock.seconds())
            self.info.channels.add(self._channel)
            server = omega.config.server
            if server.publish_rate:
                self._bucket = TokenBucket(server.publish_rate, server.publish_burst,
                                           self.info.connected_at)
            replaced = omega.registry.add(self)
            if replaced is not None:
                cast(RawProtocol, replaced).close_replaced()
            omega.hub.subscribe(self._channel, self)
        except Exception:
            _log.failure("onOpen failed for {peer}", peer=self.peer)
            self._fail_connection(1011, "Internal error")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        omega = self._omega
        info = self.info
        now = info.last_message = omega.clock.seconds()
        info.message_count += 1
        omega.metrics.messages_received.labels("raw").inc()
        if not omega.config.channels.allow_client_publish:
            self._reject(POLICY_VIOLATION, "Publishing is not allowed", "publish_denied")
        elif self._bucket is not None and not self._bucket.take(now):
            self._reject(POLICY_VIOLATION, "Publish rate exceeded", "rate_limited")
        elif isBinary and not _is_utf8(payload):
            self._reject(INVALID_PAYLOAD, "Invalid UTF-8", "invalid_utf8")
        elif parse_json_object(payload) is None:
            self._reject(UNSUPPORTED_DATA, "Invalid message format", "invalid_format")
        else:
            omega.metrics.messages_published.labels("raw").inc()
            omega.hub.publish(self._channel, payload).addErrback(self._publish_failed)

    def _reject(self, code: int, reason: str, metric_reason: str) -> None:
        self.info.error_count += 1
        self._omega.metrics.invalid_messages.labels(metric_reason).inc()
        self._fail_connection(code, reason)

    def _publish_failed(self, failure: Failure) -> None:
        self.info.error_count += 1
        _log.failure(
            "publish from {client_id} on {channel} failed", failure,
            client_id=self.info.client_id, channel=self._channel,
        )

    def onPing(self, payload: bytes) -> None:
        self.info.last_message = self._omega.clock.seconds()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.info.last_message = self._omega.clock.seconds()
        self.info.ping_sent_at = None

    def deliver(self, publication: Publication) -> None:
        if self.state == self.STATE_OPEN:
            prepared = publication.encoded("raw", self._omega.prepare_raw)
            self.sendPreparedMessage(cast(PreparedMessage, prepared))

    # -- closing (the Connection interface) ---------------------------------

    def send_heartbeat(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPing()

    def close_inactive(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(NORMAL, "Inactive client")

    def close_replaced(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(REPLACED, "replaced")

    def close_for_shutdown(self) -> None:
        if self.state == self.STATE_OPEN:
            # sendClose() refuses 1001; the close frame itself does not.
            self.sendCloseFrame(GOING_AWAY, b"going away", isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.abort()

    def drop_unresponsive(self) -> None:
        self.wasNotCleanReason = "no pong within heartbeat.ping_timeout"
        self.abort()

    def abort(self) -> None:
        self.wasClean = False
        self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        omega = self._omega
        if self._ip is not None:
            remaining = omega.per_ip.get(self._ip, 1) - 1
            if remaining > 0:
                omega.per_ip[self._ip] = remaining
            else:
                omega.per_ip.pop(self._ip, None)
            self._ip = None
        info = getattr(self, "info", None)
        if info is None:  # the handshake never completed
            return
        sent = self.localCloseCode if (self.closedByMe or self.failedByMe) else None
        close_code = sent or self.remoteCloseCode or 1006
        omega.metrics.closes.labels(str(close_code)).inc()
        omega.hub.unsubscribe(self._channel, self)
        if self.failedByMe and close_code not in (UNSUPPORTED_DATA, INVALID_PAYLOAD,
                                                   POLICY_VIOLATION):
            # Autobahn's own checks (oversize, bad UTF-8 text, protocol errors).
            info.error_count += 1
        abnormal = not wasClean or self.failedByMe
        new_state = ConnectionState.ERROR if abnormal else ConnectionState.DISCONNECTED
        why = self.wasNotCleanReason if not wasClean else f"closed with {close_code}"
        omega.registry.transition(self, new_state, why or "closed")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._omega.connection_gone(self)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._omega.connections.add(self)


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class OmegaServerFactory(WebSocketServerFactory):
    """
    Builds L{RawProtocol}s and keeps the client L{Registry}.  One factory
    serves every WebSocket listener (ws, wss, extra endpoints).
    """

    protocol = RawProtocol

    def __init__(
        self, config: Config, hub: Hub, metrics: Metrics, registry: Registry,
        clock: IReactorTime,
    ) -> None:
        super().__init__(server="omega-ws")
        self.config = config
        self.hub = hub
        self.metrics = metrics
        self.registry = registry
        self.clock = clock
        # Every connection with a transport, handshake done or not.
        self.connections: set[RawProtocol] = set()
        self.per_ip: dict[str, int] = {}
        self._origins = _origin_pattern(config.server.allowed_origins)
        self._drained: Deferred[None] | None = None
        self.noisy = False
        apply_limits(self, config)

    def origin_allowed(self, origin: str) -> bool:
        return self._origins.fullmatch(origin) is not None

    def prepare_raw(self, publication: Publication) -> PreparedMessage:
        """The raw wire format: the JSON text as one text frame, framed once."""
        return self.prepareMessage(publication.data, isBinary=False)

    def connection_gone(self, protocol: RawProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def close_all(self, timeout: float) -> Deferred[None]:
        """
        Close every connection for shutdown (1001 "going away"); fires when
        all are gone, aborting those still open after C{timeout} seconds.
        """
        if not self.connections:
            return succeed(None)
        drained = self._drained = Deferred()
        for protocol in tuple(self.connections):
            protocol.close_for_shutdown()

        def abort_stragglers() -> None:
            for protocol in tuple(self.connections):
                protocol.abort()

        straggler_call: IDelayedCall = self.clock.callLater(timeout, abort_stragglers)

        def done(result: None) -> None:
            if straggler_call.active():
                straggler_call.cancel()

        drained.addCallback(done)
        return drained


def apply_limits(factory: WebSocketServerFactory, config: Config) -> None:
    """Every safety-related Autobahn option, set deliberately: its defaults are open."""
    server = config.server
    accept = None
    if server.compression:
        window_bits = server.compression_window_bits

        def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
            for offer in offers:
                if not isinstance(offer, PerMessageDeflateOffer):
                    continue
                # Our window: ours, or lower if the client asked for less.
                asked = offer.request_max_window_bits
                ours = min(window_bits, asked) if asked else window_bits
                try:
                    return PerMessageDeflateOfferAccept(
                        offer,
                        # Cap the client's window too: it bounds our inflate memory.
                        request_max_window_bits=window_bits if offer.accept_max_window_bits
                        else 0,
                        window_bits=ours,
                        # Bounds the decompressed size too, against deflate bombs.
                        max_message_size=server.max_message_size,
                    )
                except Exception:
                    # An offer we cannot honour: go on without compression.
                    _log.info("declined permessage-deflate offer {offer}", offer=offer)
            return None

    factory.setProtocolOptions(
        webStatus=False,  # no status page, and no ?redirect= open redirect
        maxFramePayloadSize=server.max_message_size,
        maxMessagePayloadSize=server.max_message_size,
        openHandshakeTimeout=server.handshake_timeout,
        closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
        failByDrop=False,  # send the close code before dropping
        utf8validateIncoming=True,
        requireMaskedClientFrames=True,
        # Origins are checked in onConnect, to answer 403 (Autobahn says 400).
        allowedOrigins=["*"],
        maxConnections=server.max_connections,
        perMessageCompressionAccept=accept,
        autoPingInterval=0,  # one heartbeat sweep for all, not a timer each
        serveFlashSocketPolicy=False,
        trustXForwardedFor=0,
        tcpNoDelay=True,
    )


class EchoProtocol(WebSocketServerProtocol):
    """Sends every message back as it came: the conformance-test endpoint."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class EchoFactory(WebSocketServerFactory):
    """For C{server.testee_port}: the Autobahn testsuite's fuzzing client
    checks the WebSocket layer here, with the same limits as the real one."""

    protocol = EchoProtocol

    def __init__(self, config: Config) -> None:
        super().__init__(server="omega-ws")
        self.noisy = False
        apply_limits(self, config)
