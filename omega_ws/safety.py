"""
Every safety-related Autobahn option, set deliberately in one place
(Autobahn's defaults are open), the ALPN answer TLS listeners need, and
the conformance-test echo endpoint that shares them.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import implementer

from .config import Config

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "EchoFactory", "Http11OverAlpn", "apply_limits"]

_log = Logger()

CLOSE_HANDSHAKE_TIMEOUT = 2.0


class Http11OverAlpn:
    """
    Twisted's TLS layer aborts a handshake that offers ALPN (every browser,
    curl and Node do) unless the factory names its protocols: WebSocket
    runs over HTTP/1.1.  (Mixed into a factory that also declares
    C{IProtocolNegotiationFactory}.)
    """

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


def apply_limits(factory: WebSocketServerFactory, config: Config) -> None:
    """Every safety-related Autobahn option, set deliberately: its defaults are open."""
    server = config.server
    accept = None
    if server.compression:
        window_bits = server.compression_window_bits
        no_takeover = server.compression_no_context_takeover

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
                        # Without context takeover no compressor outlives its
                        # message: about 100 KiB less per connection, for a
                        # worse ratio on small similar messages.
                        no_context_takeover=no_takeover or None,
                        request_no_context_takeover=(no_takeover
                                                     and offer.accept_no_context_takeover),
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
        # Origins are checked in onConnect, to answer 403 (Autobahn says 400),
        # "null" (file:// pages, sandboxed frames) included.
        allowedOrigins=["*"],
        allowNullOrigin=True,
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


@implementer(IProtocolNegotiationFactory)
class EchoFactory(Http11OverAlpn, WebSocketServerFactory):
    """For C{server.testee_port}: the Autobahn testsuite's fuzzing client
    checks the WebSocket layer here, with the same limits as the real one."""

    protocol = EchoProtocol

    def __init__(self, config: Config) -> None:
        super().__init__(server="omega-ws")
        self.noisy = False
        apply_limits(self, config)
