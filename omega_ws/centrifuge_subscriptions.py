"""
What the hub holds for each channel a Centrifuge connection subscribed
to: L{ChannelSubscriber}, with the subscription's state (L{Subscription}).
It passes publications, resyncs and other nodes' join/leave to the wire.
"""

from __future__ import annotations

import json
from typing import Protocol

from .broker import Publication
from .jsonutil import compact
from .registry import ClientInfo
from .wire import Link

__all__ = ["INSUFFICIENT_STATE", "ChannelSubscriber", "Subscription"]

# Centrifugo's disconnect code when a subscription's stream state was lost
# (reconnect, and recover).
INSUFFICIENT_STATE = 3010


class Wire(Protocol):
    """What a subscriber needs of its connection's Centrifuge wire."""

    link: Link

    def deliver(self, subscription: Subscription, publication: Publication) -> None: ...

    def close_with(self, code: int, reason: str) -> None: ...

    def _send(self, messages: list[bytes]) -> None: ...


class Subscription:
    __slots__ = ("channel", "join_leave", "pending", "ready")

    def __init__(self, channel: str, join_leave: bool) -> None:
        self.channel = channel
        self.join_leave = join_leave
        # Live publications held back until the subscribe reply is out
        # (None once it is); the SDKs drop pushes for a channel before that.
        self.pending: list[Publication] | None = []
        self.ready = False  # the reply is made


class ChannelSubscriber:
    """What the hub holds for one subscribed channel of one connection."""

    __slots__ = ("wire", "subscription")

    def __init__(self, wire: Wire, subscription: Subscription) -> None:
        self.wire = wire
        self.subscription = subscription

    def deliver(self, publication: Publication) -> None:
        self.wire.deliver(self.subscription, publication)

    def resync(self) -> None:
        """
        The broker lost part of the live stream.  As Centrifugo: disconnect
        with 3010 "insufficient state"; the SDK reconnects and recovers
        every subscription from its own positions.
        """
        self.wire.close_with(INSUFFICIENT_STATE, "insufficient state")

    def announced(self, kind: str, info: bytes) -> None:
        """A client on another node joined or left the channel."""
        subscription = self.subscription
        if subscription.join_leave and subscription.ready:
            self.wire._send([compact({"push": {"channel": subscription.channel,
                                               kind: {"info": json.loads(info)}}})])

    @property
    def info(self) -> ClientInfo:
        return self.wire.link.info
