"""
Every reach into Autobahn's and Twisted's internals, in one place.

omega-ws leans on a few private attributes for speed and for bounds the
public APIs do not offer.  Each is looked up here, at import time where
the attribute lives on a class or module and at the use site (with a
default) where it lives on an instance; each has a fallback that only
public API needs, so that an upgrade that renames one costs speed or a
nicety, never correctness.  C{tests/test_compat.py} has one test per
attribute, named after it, that fails when an upgrade removes it: run it
first after upgrading either dependency.

  - Autobahn C{WebSocketProtocol.data}: the unparsed input, to cap the
    request head (431) and to drop the rest of a flood once closing.
    Fallback: no cap of ours (Autobahn's own checks), the flood parsed.
  - Autobahn C{WebSocketProtocol._fail_connection}: fail with a close
    code.  Fallback: a close frame sent with the public protocol fields.
  - Autobahn C{_perMessageCompress}, and its C{_compressor} /
    C{_decompressor}: whether a connection compresses, and dropping zlib
    state between messages.  Fallback: frames go uncompressed (RFC 7692
    allows any message to be), and nothing is dropped.
  - Autobahn C{autobahn.websocket.protocol.pformat}: skipped while a
    connection is set up (about 90 us per handshake).  Fallback: kept.
  - Autobahn C{WebSocketServerProtocol.CONFIG_ATTRS}: the options copied
    onto each connection, made class attributes instead.  Fallback: copied.
  - Autobahn C{send_queue}: emptied after the handshake.  Fallback: kept.
  - Autobahn C{_connectionMade}, C{_closeConnection}: overridden to skip
    the C{pformat} and to close without a TCP reset.  Fallback: not called.
  - Twisted C{FileDescriptor.dataBuffer}, C{offset}, C{_tempDataBuffer},
    C{_tempDataLen}, C{tcp.Connection.socket}, C{_aborting}: what Twisted
    still buffers, and the socket itself, to write straight to it and to
    ask the kernel what is unsent.  Fallback: C{transport.write}, unknown
    unsent bytes (a raw session then resumes from its last settled
    position), and an abort with a reset.
  - Twisted TLS C{_appSendBuffer}: plain bytes not yet encrypted.
    Fallback: counted as none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.compress_deflate import PerMessageDeflate
from twisted.internet import abstract, tcp

__all__ = [
    "HAS_CONFIG_ATTRS", "HAS_PFORMAT", "HAS_TCP_BUFFERS", "HAS_TCP_SOCKET", "config_attrs",
    "fail_connection", "release_deflate", "request_head", "tcp_buffered",
    "tls_pending", "call_without_pformat",
]

HAS_FAIL_CONNECTION = callable(getattr(WebSocketServerProtocol, "_fail_connection", None))
HAS_PFORMAT = callable(getattr(_autobahn_protocol, "pformat", None))
HAS_CONFIG_ATTRS = isinstance(getattr(WebSocketServerProtocol, "CONFIG_ATTRS", None),
                              tuple | list)
# Twisted sets some of its buffers up in __init__: look at a descriptor made
# with a stand-in reactor (no global reactor is imported here).
_descriptor = abstract.FileDescriptor(reactor=cast(Any, True))
HAS_TCP_BUFFERS = all(hasattr(_descriptor, name)
                      for name in ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen"))
del _descriptor
HAS_TCP_SOCKET = hasattr(tcp.Connection, "_aborting") and hasattr(tcp.Connection, "getHandle")
_deflate = PerMessageDeflate(True, False, False, 0, 0, 0)
HAS_DEFLATE_STATE = hasattr(_deflate, "_compressor") and hasattr(_deflate, "_decompressor")
del _deflate


def request_head(protocol: Any) -> bytes | None:
    """The input Autobahn has not parsed yet (the request head, while connecting)."""
    data = getattr(protocol, "data", None)
    return data if isinstance(data, bytes) else None


def discard_input(protocol: Any) -> None:
    """
    Drop the input Autobahn has read but not parsed yet: the rest of a flood
    of tiny frames is not worth parsing once the connection is closing.
    Fallback: it is parsed (within the allowance of C{protocol.py}).
    """
    if isinstance(getattr(protocol, "data", None), bytes):
        protocol.data = b""


def fail_connection(protocol: Any, code: int, reason: str) -> None:
    """Close for a failure: the close frame with C{code}, the entry marked failed."""
    if HAS_FAIL_CONNECTION:
        protocol._fail_connection(code, reason)
    else:
        protocol.failedByMe = True
        protocol.sendCloseFrame(code, reason.encode()[:123], isReply=False)


def compression(protocol: Any) -> Any:
    """The connection's permessage-deflate state, or None when it does not compress."""
    return getattr(protocol, "_perMessageCompress", None)


def release_deflate(deflate: Any, outgoing: bool) -> None:
    """
    Without context takeover a zlib object is useless after its message,
    but Autobahn keeps it until the next one (about 136 KiB to compress at
    window 11): drop it now.
    """
    if not HAS_DEFLATE_STATE:
        return
    if outgoing and deflate.server_no_context_takeover:
        deflate._compressor = None
    elif not outgoing and deflate.client_no_context_takeover:
        deflate._decompressor = None


def call_without_pformat(function: Callable[[], None]) -> None:
    """
    C{function()}, but without the pretty-printing of options Autobahn does
    for a debug log on every new connection, debug on or not: about 90 us,
    a third of a handshake (the options are class attributes, so there is
    nothing to show).
    """
    if not HAS_PFORMAT:
        function()
        return
    original = _autobahn_protocol.pformat
    _autobahn_protocol.pformat = _no_pformat  # type: ignore[assignment]
    try:
        function()
    finally:
        _autobahn_protocol.pformat = original


def _no_pformat(value: object, *args: object, **kwargs: object) -> str:
    return "(options are class attributes)"


def config_attrs() -> tuple[str, ...]:
    """The option names Autobahn copies onto each connection (none if unknown)."""
    return tuple(getattr(WebSocketServerProtocol, "CONFIG_ATTRS", ())) if HAS_CONFIG_ATTRS \
        else ()


def drop_send_queue(protocol: Any) -> None:
    """
    Autobahn's queue for chopped or "sync" writes, which omega-ws never
    asks for: an empty tuple instead of a deque on every connection (one
    of those writes would now fail loudly, not mix up bytes).
    """
    if hasattr(protocol, "send_queue"):
        protocol.send_queue = ()


def tcp_buffered(connection: tcp.Connection) -> int | None:
    """Bytes Twisted still holds for C{connection}; None if that cannot be known."""
    if not HAS_TCP_BUFFERS:
        return None
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def tcp_drop_buffers(connection: tcp.Connection) -> bool:
    """Forget what Twisted holds for C{connection}; False if it cannot."""
    if not HAS_TCP_BUFFERS:
        return False
    connection.dataBuffer = b""
    connection.offset = 0
    connection._tempDataBuffer = []
    connection._tempDataLen = 0
    return True


def tls_pending(transport: Any) -> int:
    """Plain bytes a TLS transport holds before encrypting them (0 for plain TCP)."""
    return sum(len(chunk) for chunk in getattr(transport, "_appSendBuffer", ()))
