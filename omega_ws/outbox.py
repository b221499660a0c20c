"""
Fan-out at the hardware's pace: frames for one connection are queued and
written with one C{transport.write} per reactor turn, however many
publications reached it in that turn; a connection whose peer stops reading
is bounded, never waited for.

Each L{Outbox} is its transport's push producer: when the transport's own
buffer fills up it pauses the outbox, which then keeps frames itself and
reports an overflow past C{limit} bytes, so that the connection is closed
as a slow consumer instead of growing without bound or slowing the others.
One L{FlushScheduler} per server runs every dirty outbox once per turn.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import main, tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._compat import HAS_TCP_BUFFERS, HAS_TCP_SOCKET, tcp_buffered, tcp_drop_buffers, tls_pending

__all__ = ["FlushScheduler", "Outbox", "close_without_reset", "unsent_bytes"]

_log = Logger()


class FlushScheduler:
    """Flushes the outboxes that got frames, once, on the next reactor turn."""

    __slots__ = ("_clock", "_dirty", "_call")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[Outbox] = []
        self._call: IDelayedCall | None = None

    def add(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                # One connection's failure must not stall the others' output.
                _log.failure("flushing an outbox failed")


@implementer(IPushProducer)
class Outbox:
    """
    The frames waiting for one connection.  C{on_written(mark)} reports the
    last mark (e.g. a publication) handed to the transport; C{on_overflow()}
    that the peer has fallen more than C{limit} bytes behind.
    """

    __slots__ = ("_transport", "_tcp", "_scheduler", "_limit", "_on_overflow", "_on_written",
                 "_frames", "_size", "_mark", "paused", "overflowed", "sent")

    def __init__(self, transport: ITransport, scheduler: FlushScheduler, limit: int,
                 on_overflow: Callable[[], None],
                 on_written: Callable[[Any], None] | None = None) -> None:
        self._transport = transport
        # A plain TCP connection can be written to directly (see _write).
        direct = isinstance(transport, tcp.Connection) and HAS_TCP_BUFFERS and HAS_TCP_SOCKET
        self._tcp = cast(tcp.Connection, transport) if direct else None
        self._scheduler = scheduler
        self._limit = limit
        self._on_overflow = on_overflow
        self._on_written = on_written
        self._frames: list[bytes] = []
        self._size = 0
        self._mark: Any = None
        self.paused = False
        self.overflowed = False
        self.sent = 0  # bytes handed to the transport, ever

    @property
    def size(self) -> int:
        """Bytes queued here, not yet handed to the transport."""
        return self._size

    def put(self, frame: bytes, mark: Any = None) -> None:
        if self.overflowed:
            return
        if not self._frames:
            self._scheduler.add(self)
        self._frames.append(frame)
        self._size += len(frame)
        if mark is not None:
            self._mark = mark
        if self.paused and self._size > self._limit:
            self.overflowed = True
            self.discard()
            self._on_overflow()

    def admit(self, size: int) -> bool:
        """
        For bytes written around the queue (compressed messages): count them
        while paused, and report an overflow past the limit.  False once the
        connection overflowed: nothing more is to be written.
        """
        if self.overflowed:
            return False
        if self.paused:
            self._size += size
            if self._size > self._limit:
                self.overflowed = True
                self.discard()
                self._on_overflow()
                return False
        return True

    def flush(self, force: bool = False) -> None:
        """Hand everything queued to the transport in one write (unless paused)."""
        frames = self._frames
        if (self.paused and not force) or not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        mark = self._mark
        self._frames = []
        self._size = 0
        self._mark = None
        self._write(data)
        if mark is not None and self._on_written is not None:
            self._on_written(mark)

    def _write(self, data: bytes) -> None:
        """
        C{transport.write(data)}, but on plain TCP with nothing buffered the
        bytes go straight to the socket: Twisted's write would buffer them
        and cost an C{epoll_ctl} to start writing and another to stop, for
        every connection, every turn.  Only what the socket does not take is
        left to the transport, so the order of bytes is kept.
        """
        self.sent += len(data)
        tcp_transport = self._tcp
        if (tcp_transport is not None and tcp_transport.connected
                and not tcp_transport.disconnecting and not tcp_buffered(tcp_transport)):
            try:
                sent = tcp_transport.getHandle().send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error the transport will see for itself
            if sent == len(data):
                return
            data = data[sent:]
        self._transport.write(data)

    def close(self) -> None:
        """Take nothing more: the connection is closing."""
        self.overflowed = True
        self.discard()

    def discard(self) -> None:
        self._frames = []
        self._size = 0
        self._mark = None

    # -- IPushProducer, for the transport ----------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._frames:
            self._scheduler.add(self)
        elif self._size:  # only counted bytes (admit): the transport took them
            self._size = 0

    def stopProducing(self) -> None:
        self.discard()


def _tcp_of(transport: object) -> tcp.Connection | None:
    """The TCP connection under C{transport} (itself, or under TLS)."""
    if isinstance(transport, tcp.Connection):
        return transport
    inner = getattr(transport, "transport", None)  # TLSMemoryBIOProtocol
    return inner if isinstance(inner, tcp.Connection) else None


def unsent_bytes(transport: object) -> int | None:
    """
    Bytes written to C{transport} that the peer's TCP has not acknowledged:
    what Twisted (and TLS) still buffer plus the kernel's send queue
    (C{SIOCOUTQ}).  Under TLS the kernel counts encrypted bytes, which are
    more than the plain ones: an over-estimate, never an under-estimate.
    None when the socket is gone, is not TCP, or Twisted's buffers are not
    known (see C{_compat}).
    """
    connection = _tcp_of(transport)
    if connection is None or not connection.connected or not HAS_TCP_SOCKET:
        return None
    buffered = tcp_buffered(connection)
    if buffered is None:
        return None
    try:
        raw = fcntl.ioctl(connection.getHandle().fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return None
    return tls_pending(transport) + buffered + int(struct.unpack("i", raw)[0])


def close_without_reset(transport: object) -> bool:
    """
    End a connection whose peer stopped reading without a TCP reset, which
    would make the peer's kernel discard what it already received: drop
    what was never handed to the kernel (callers count it as unsent),
    drain unread input (closing with unread input sends a reset), and
    close the socket now, in an orderly way: the kernel delivers its queue
    and a FIN in the background, and the descriptor is free at once (a
    peer that never reads again holds nothing of ours).  False when
    C{transport} is not TCP: abort it instead.
    """
    connection = _tcp_of(transport)
    if (connection is None or not HAS_TCP_SOCKET or not connection.connected
            or connection.disconnected or connection._aborting):
        return False
    if not tcp_drop_buffers(connection):
        return False
    connection._aborting = True  # Twisted's own guard against a second close
    connection.stopReading()
    connection.stopWriting()
    if connection.producer is not None:
        connection.unregisterProducer()

    def close() -> None:
        try:
            for _ in range(64):  # bounded: at most 4 MiB of input read and dropped
                if not connection.getHandle().recv(65536, socket.MSG_DONTWAIT):
                    break
        except (OSError, AttributeError):
            pass  # nothing more to read (EAGAIN), or the socket is gone
        # CONNECTION_DONE: Twisted shuts the socket down and closes it, no linger.
        connection.connectionLost(Failure(main.CONNECTION_DONE))

    # As Twisted's abortConnection: not from within the caller's stack.
    cast(IReactorTime, connection.reactor).callLater(0, close)
    return True
