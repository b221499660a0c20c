"""
The hub: channels and their subscribers, knowing nothing of sockets.

Protocols subscribe L{Subscriber}s to channels and publish through the hub;
the hub hands publications to the broker, and the broker hands every
publication of a channel this process listens to back to L{Hub._dispatch},
which gives it to each local subscriber.  A subscriber must never block:
it queues or writes, it does not wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .broker import Broker, Publication
from .registry import ClientInfo

__all__ = ["Hub", "Subscriber"]

_log = Logger()


class Subscriber(Protocol):
    def deliver(self, publication: Publication) -> None:
        """Take one publication; must not block or raise."""


# (publication, number of local subscribers it was handed to)
DispatchHook = Callable[[Publication, int], None]


class Hub:
    """Channel membership in this process, and publishing through the broker."""

    def __init__(self, broker: Broker, on_dispatch: DispatchHook | None = None) -> None:
        self.broker = broker
        self._channels: dict[str, set[Subscriber]] = {}
        self._on_dispatch = on_dispatch
        broker.set_handler(self._dispatch)

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is None:
            subscribers = self._channels[channel] = set()
            self.broker.subscribe(channel)
        subscribers.add(subscriber)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._channels[channel]
            self.broker.unsubscribe(channel)

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        """
        Publish C{data} (JSON text as UTF-8) on C{channel}.  Fires with the
        numbered L{Publication} once the broker took it; local subscribers
        may have it before that.  Fails with L{BrokerUnavailable}.
        """
        return self.broker.publish(channel, data)

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(subscribers) for name, subscribers in self._channels.items()}

    def subscriber_count(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def subscribers(self, channel: str) -> tuple[Subscriber, ...]:
        return tuple(self._channels.get(channel, ()))

    def members(self, channel: str) -> list[ClientInfo]:
        """The clients subscribed to C{channel} here, once each (presence)."""
        members: dict[str, ClientInfo] = {}
        for subscriber in self._channels.get(channel, ()):
            info = getattr(subscriber, "info", None)
            if isinstance(info, ClientInfo):
                members[info.client_id] = info
        return list(members.values())

    def _dispatch(self, publication: Publication) -> None:
        subscribers = self._channels.get(publication.channel)
        if not subscribers:
            publication.dispatched()
            return
        # A snapshot: a delivery may close a connection, which unsubscribes it.
        snapshot = tuple(subscribers)
        for subscriber in snapshot:
            try:
                subscriber.deliver(publication)
            except Exception:
                # One broken subscriber must not cost the others their copy.
                _log.failure(
                    "delivery of {publication} to {subscriber} failed",
                    publication=publication,
                    subscriber=subscriber,
                )
        publication.dispatched()
        if self._on_dispatch is not None:
            self._on_dispatch(publication, len(snapshot))
