"""
Brokers carry publications between the hub and wherever they are shared.

The hub talks to one small interface, L{Broker}; L{MemoryBroker} keeps
everything in the process and is the default (C{memory://}).  A broker
assigns each publication the channel's next C{offset} and the stream's
C{epoch}, and hands it back to the hub through the handler it was given,
for every subscriber in this process.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "Publication", "make_broker"]


class BrokerUnavailable(Exception):
    """The broker cannot take publications now; a temporary condition."""


class Publication:
    """
    One message on one channel, as the broker numbered it.

    C{data} is the JSON text exactly as it was published, as UTF-8 bytes;
    it is delivered byte for byte.  Encoded forms (a WebSocket frame per
    wire format) are computed once per publication and shared by every
    subscriber through L{encoded}.
    """

    __slots__ = ("channel", "offset", "epoch", "data", "_encoded")

    def __init__(self, channel: str, offset: int, epoch: str, data: bytes) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.data = data
        self._encoded: dict[str, object] = {}

    def encoded(self, wire_format: str, encode: Callable[[Publication], object]) -> object:
        """C{encode(self)}, computed once per C{wire_format} and then reused."""
        try:
            return self._encoded[wire_format]
        except KeyError:
            value = self._encoded[wire_format] = encode(self)
            return value

    def __repr__(self) -> str:
        return f"<Publication {self.channel}@{self.epoch}:{self.offset} {len(self.data)} bytes>"


PublicationHandler = Callable[[Publication], None]


class Broker(Protocol):
    """What the hub needs of a broker."""

    def set_handler(self, handler: PublicationHandler) -> None:
        """Deliver every publication of a subscribed channel to C{handler}."""

    def start(self) -> Deferred[None]:
        """Connect; fires when publications can flow."""

    def stop(self) -> Deferred[None]:
        """Disconnect; fires when done."""

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        """
        Number and distribute C{data} on C{channel}; fires with the
        L{Publication}, or fails with L{BrokerUnavailable}.
        """

    def subscribe(self, channel: str) -> None:
        """This process has its first subscriber on C{channel}."""

    def unsubscribe(self, channel: str) -> None:
        """This process has no subscriber left on C{channel}."""

    @property
    def healthy(self) -> bool:
        """Whether publications can flow now."""


class MemoryBroker:
    """
    Everything in this process.  Offsets count from 1 per channel; the
    epoch is random per broker start, since a restart loses the streams.
    """

    def __init__(self) -> None:
        self._handler: PublicationHandler = lambda publication: None
        self._offsets: dict[str, int] = {}
        self._epoch = secrets.token_hex(4)
        self._running = False

    def set_handler(self, handler: PublicationHandler) -> None:
        self._handler = handler

    def start(self) -> Deferred[None]:
        self._running = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self._running = False
        return succeed(None)

    @property
    def healthy(self) -> bool:
        return self._running

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        if not self._running:
            return fail(BrokerUnavailable("the memory broker is stopped"))
        offset = self._offsets.get(channel, 0) + 1
        self._offsets[channel] = offset
        publication = Publication(channel, offset, self._epoch, data)
        self._handler(publication)
        return succeed(publication)

    def subscribe(self, channel: str) -> None:
        pass

    def unsubscribe(self, channel: str) -> None:
        pass


def make_broker(url: str) -> Broker:
    """The broker for a validated C{broker.url}."""
    if url.startswith("memory://"):
        return MemoryBroker()
    raise ValueError(f"unsupported broker URL {url!r}")
