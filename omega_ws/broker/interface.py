"""
What the hub needs of a broker: one small interface, L{Broker}.

A broker assigns each publication the channel's next C{offset} and the
stream's C{epoch}, keeps history and raw sessions, and hands every
publication of a channel this process subscribed to back to the hub
through the handler it was given.  Every answer is a Deferred: a broker may
answer inline (memory) or from another process (Redis), and may deliver a
publication before or after C{publish}'s Deferred fires.  The contract,
for every implementation, is C{tests/test_broker_contract.py}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from .history import Publication, Recovery, StreamPosition
from .sessions import SessionStore

__all__ = ["Broker", "BrokerUnavailable", "PublicationHandler"]


class BrokerUnavailable(Exception):
    """The broker cannot take publications now; a temporary condition."""


PublicationHandler = Callable[[Publication], None]


class Broker(Protocol):
    """What the hub needs of a broker."""

    sessions: SessionStore

    def set_handler(self, handler: PublicationHandler) -> None:
        """Deliver every publication of a subscribed channel to C{handler}."""

    def start(self) -> Deferred[None]:
        """Connect; fires when publications can flow."""

    def stop(self) -> Deferred[None]:
        """Disconnect; fires when done."""

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        """
        Number, keep in history and distribute C{data} on C{channel}; fires
        with the L{Publication}, or fails with L{BrokerUnavailable}.
        """

    def subscribe(self, channel: str) -> None:
        """This process has its first subscriber on C{channel}."""

    def unsubscribe(self, channel: str) -> None:
        """This process has no subscriber left on C{channel}."""

    def position(self, channel: str) -> Deferred[StreamPosition]:
        """The stream's current epoch and top offset."""

    def recover(self, channel: str, since: StreamPosition) -> Deferred[Recovery]:
        """All publications after C{since}, or none (see L{Streams.recover})."""

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool) -> Deferred[tuple[list[Publication], StreamPosition]]:
        """Kept publications and the current position."""

    def housekeeping(self, now: float) -> None:
        """Expire history, streams and sessions (the monitor calls this)."""

    def stats(self) -> dict[str, int]:
        """Figures for the metrics (streams, history_bytes, sessions, ...)."""

    @property
    def healthy(self) -> bool:
        """Whether publications can flow now."""
