"""
One test per private Autobahn or Twisted attribute omega-ws reaches for
(see omega_ws/_compat.py): each fails by name when an upgrade removes it.
Run this file first after upgrading either dependency.
"""

from __future__ import annotations

import inspect

import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress_deflate import PerMessageDeflate
from twisted.internet import abstract, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from omega_ws import _compat


def _connected_protocol() -> WebSocketServerProtocol:
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    protocol.makeConnection(StringTransport())
    return protocol


def test_autobahn_protocol_data() -> None:
    assert isinstance(_connected_protocol().data, bytes)  # type: ignore[attr-defined]


def test_autobahn_fail_connection() -> None:
    assert _compat.HAS_FAIL_CONNECTION
    assert callable(WebSocketServerProtocol._fail_connection)


def test_autobahn_per_message_compress() -> None:
    assert _connected_protocol()._perMessageCompress is None  # type: ignore[attr-defined]


def test_autobahn_deflate_compressor_and_decompressor() -> None:
    assert _compat.HAS_DEFLATE_STATE
    deflate = PerMessageDeflate(True, True, True, 0, 0, 0)
    assert deflate._compressor is None and deflate._decompressor is None


def test_autobahn_pformat() -> None:
    assert _compat.HAS_PFORMAT and callable(autobahn_protocol.pformat)


def test_autobahn_config_attrs() -> None:
    assert _compat.HAS_CONFIG_ATTRS
    assert "maxMessagePayloadSize" in WebSocketServerProtocol.CONFIG_ATTRS


def test_autobahn_send_queue() -> None:
    assert hasattr(_connected_protocol(), "send_queue")


def test_autobahn_connection_made_and_close_connection() -> None:
    assert callable(WebSocketServerProtocol._connectionMade)
    assert callable(WebSocketServerProtocol._closeConnection)


def test_twisted_file_descriptor_buffers() -> None:
    assert _compat.HAS_TCP_BUFFERS
    descriptor = abstract.FileDescriptor(reactor=True)  # type: ignore[arg-type]
    assert descriptor.dataBuffer == b"" and descriptor.offset == 0
    assert descriptor._tempDataBuffer == [] and descriptor._tempDataLen == 0


def test_twisted_tcp_aborting_and_handle() -> None:
    assert _compat.HAS_TCP_SOCKET
    assert tcp.Connection._aborting is False
    assert callable(tcp.Connection.getHandle)


def test_twisted_tls_app_send_buffer() -> None:
    # Set when the TLS layer connects; its name must still be in the class.
    assert "self._appSendBuffer" in inspect.getsource(TLSMemoryBIOProtocol)


def test_fallbacks_need_no_private_attribute() -> None:
    assert _compat.request_head(object()) is None
    assert _compat.compression(object()) is None
    assert _compat.tls_pending(object()) == 0
