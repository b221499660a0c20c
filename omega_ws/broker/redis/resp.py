"""
One connection to Redis, speaking RESP2: commands are pipelined (written
as they come, answered in order) and replies parsed by C{hiredis}, the C
parser Redis itself maintains.

A connection is either a command connection (every reply answers the
oldest command waiting) or, after L{RedisProtocol.enter_pubsub}, a
subscriber connection: then Redis pushes C{message}, C{subscribe} and
C{pong} replies that answer no particular command, and they go to the
L{PubSubListener}.

Why not txredisapi: its calls wait for ever while Redis is away, where a
broker must fail a publish at once; it drops the confirmations of a
SUBSCRIBE naming several channels, which is what a recovering subscribe
waits for; and it cannot ping an idle subscriber connection.  What is
needed here is small: this module and C{connector.py}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure

from ..interface import BrokerUnavailable

__all__ = ["PubSubListener", "RedisError", "RedisProtocol", "encode_command",
           "protocol_factory"]

Arg = bytes | str | int | float


class RedisError(Exception):
    """An error reply (C{-ERR ...}): the command was refused, Redis is up."""


def _bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, float):
        return repr(arg).encode()
    return str(arg).encode()


def encode_command(args: Sequence[Arg]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _bytes(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class PubSubListener(Protocol):
    def message(self, channel: bytes, data: bytes) -> None:
        """A message published on C{channel}."""

    def subscribed_to(self, channel: bytes) -> None:
        """Redis confirmed the subscription to C{channel}."""

    def pong(self) -> None:
        """Redis answered a PING on the subscriber connection."""


class RedisProtocol(TwistedProtocol):
    """
    One Redis connection.  C{sent_at} holds, for each command awaiting its
    reply, when it was sent (the connector's reply timeout reads it).
    """

    def __init__(self, clock_seconds: Any) -> None:
        self._seconds = clock_seconds
        self._reader = hiredis.Reader(replyError=RedisError)
        self._waiting: deque[Deferred[Any]] = deque()
        self.sent_at: deque[float] = deque()
        self.listener: PubSubListener | None = None
        self.connected_deferred: Deferred[RedisProtocol] = Deferred()
        self.lost_deferred: Deferred[None] = Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        self.connected_deferred.callback(self)

    def execute(self, *args: Arg) -> Deferred[Any]:
        """Send one command; fires with its reply or fails with L{RedisError}."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Deferred[Any]]:
        """Send several commands in one write; one Deferred each, in order."""
        if self.closed:
            return [_unavailable("the connection to Redis is closed") for _ in commands]
        now = self._seconds()
        waiting: list[Deferred[Any]] = []
        for _ in commands:
            d: Deferred[Any] = Deferred()
            self._waiting.append(d)
            self.sent_at.append(now)
            waiting.append(d)
        self.transport.write(b"".join(encode_command(c) for c in commands))  # type: ignore[union-attr]
        return waiting

    def send(self, *args: Arg) -> None:
        """Send a command whose answer comes as a push (subscriber connections)."""
        if not self.closed:
            self.transport.write(encode_command(args))  # type: ignore[union-attr]

    def enter_pubsub(self, listener: PubSubListener) -> None:
        """From now on replies are pushes for C{listener}."""
        self.listener = listener

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                self._reply(reply)
        except hiredis.ProtocolError:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _reply(self, reply: Any) -> None:
        listener = self.listener
        if listener is not None and isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                listener.message(reply[1], reply[2])
            elif kind == b"subscribe":
                listener.subscribed_to(reply[1])
            elif kind == b"pong":
                listener.pong()
            return  # unsubscribe confirmations: nothing waits for them
        if not self._waiting:
            return
        d = self._waiting.popleft()
        self.sent_at.popleft()
        if isinstance(reply, RedisError):
            d.errback(Failure(reply))
        else:
            d.callback(reply)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, deque()
        self.sent_at.clear()
        for d in waiting:
            d.errback(Failure(BrokerUnavailable("the connection to Redis was lost")))
        self.lost_deferred.callback(None)


def protocol_factory(reactor: Any) -> Any:
    """Makes L{RedisProtocol}s timed by C{reactor}."""
    factory = Factory.forProtocol(lambda: RedisProtocol(reactor.seconds))
    factory.noisy = False  # a line per reconnect would say nothing the broker does not
    return factory


def _unavailable(message: str) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(BrokerUnavailable(message)))
    return d
