"""
The hub: channels and their subscribers, knowing nothing of sockets.

Wires subscribe L{Subscriber}s to channels and publish through the hub;
the hub hands publications to the broker, and the broker hands every
publication of a channel this process listens to back to L{Hub._dispatch},
which gives it to each local subscriber.  A subscriber must never block:
it queues or writes, it does not wait.

The hub is also the one place that joins a subscriber to a stream from a
position (L{Hub.join}): live publications are held while the broker reads
the position or the history, then merged after what was missed, by
offset, with no loss and no duplicate at the joint.  Sessions and history
reads go through the hub too, so that no wire talks to the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .broker import (
    Broker,
    BrokerUnavailable,
    Member,
    Publication,
    Recovery,
    Session,
    StreamPosition,
)
from .broker.interface import SurveyHandler
from .registry import ClientInfo

__all__ = ["BrokerUnavailable", "Hub", "Joined", "Subscriber"]

_log = Logger()


class Subscriber(Protocol):
    def deliver(self, publication: Publication) -> None:
        """Take one publication; must not block or raise."""


# (publication, number of local subscribers it was handed to)
DispatchHook = Callable[[Publication, int], None]


@dataclass(frozen=True, slots=True)
class Joined:
    """
    What a subscriber joining a stream gets, to send before anything live:
    C{publications} in offset order (what it missed, then live ones held
    during the join), and the stream's C{position} when the broker
    answered.  C{recovered} is False when a recovery was asked for and
    history no longer covered it: then C{missed} is what history still had
    when C{best_effort} was asked, else nothing.
    """

    position: StreamPosition
    publications: list[Publication]
    recovered: bool = True
    missed: int = 0  # how many of the publications came from history


def _after(publication: Publication, position: StreamPosition) -> bool:
    """Is C{publication} past C{position} (or on another epoch, a new stream)?"""
    return publication.epoch != position.epoch or publication.offset > position.offset


class _Joining:
    """Stands in for a subscriber while its join is read: holds live publications."""

    __slots__ = ("subscriber", "held")

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.held: list[Publication] = []

    def deliver(self, publication: Publication) -> None:
        self.held.append(publication)

    @property
    def info(self) -> ClientInfo | None:
        return getattr(self.subscriber, "info", None)


class _Joint:
    """
    Stands in for a subscriber just joined, until the stream is past its
    position: a broker may deliver a publication it numbered before it
    answered the join, and that one the subscriber already has.
    """

    __slots__ = ("subscriber", "position", "hub", "channel")

    def __init__(self, hub: Hub, channel: str, subscriber: Subscriber,
                 position: StreamPosition) -> None:
        self.hub = hub
        self.channel = channel
        self.subscriber = subscriber
        self.position = position

    def deliver(self, publication: Publication) -> None:
        if not _after(publication, self.position):
            return  # already given with the join
        self.hub._replace(self.channel, self.subscriber, self, None)  # no filter from now on
        self.subscriber.deliver(publication)

    @property
    def info(self) -> ClientInfo | None:
        return getattr(self.subscriber, "info", None)


class Hub:
    """Channel membership in this process, and publishing through the broker."""

    def __init__(self, broker: Broker, on_dispatch: DispatchHook | None = None) -> None:
        self.broker = broker
        self._channels: dict[str, set[Subscriber]] = {}
        # A subscriber's stand-in (_Joining, _Joint) while it joins, by channel.
        self._standins: dict[tuple[str, Subscriber], Subscriber] = {}
        self._on_dispatch = on_dispatch
        broker.set_handler(self._dispatch)
        broker.set_resync_handler(self._resync)
        broker.cluster.set_presence_source(self._local_members)
        broker.cluster.set_announce_handler(self._announced)

    # -- membership -------------------------------------------------------------

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Live publications from now on, with no position (no recovery)."""
        subscribers = self._channels.get(channel)
        if subscribers is None:
            subscribers = self._channels[channel] = set()
            self.broker.subscribe(channel)
        subscribers.add(subscriber)
        info = getattr(subscriber, "info", None)
        if isinstance(info, ClientInfo):
            self.broker.cluster.present(channel, Member(info.client_id, info.user,
                                                        info.transport))

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is None:
            return
        subscribers.discard(self._standins.pop((channel, subscriber), subscriber))
        info = getattr(subscriber, "info", None)
        if isinstance(info, ClientInfo):
            self.broker.cluster.absent(channel, info.client_id)
        if not subscribers:
            del self._channels[channel]
            self.broker.unsubscribe(channel)

    def join(self, channel: str, subscriber: Subscriber, since: StreamPosition | None = None,
             best_effort: bool = False) -> Deferred[Joined]:
        """
        Subscribe from C{since} (recover what came after it), or from the
        current position when None.  Live publications are held meanwhile
        and come in the L{Joined} after the missed ones; from then on the
        subscriber gets every publication past the joint exactly once.
        With C{best_effort}, a recovery that history cannot cover fully
        gives what history still has.  Fails with L{BrokerUnavailable} (the
        subscriber is then not subscribed).
        """
        joining = _Joining(subscriber)
        subscribers = self._channels.get(channel)
        if subscribers is not None:  # joining again (a resync): no new broker subscription
            subscribers.discard(self._standins.pop((channel, subscriber), subscriber))
        self.subscribe(channel, joining)
        self._standins[(channel, subscriber)] = joining
        broker = self.broker
        # Read only once the broker hands over everything live: then
        # nothing falls between what is read and what is held.
        ready = broker.subscribed(channel)
        read: Deferred[Joined]
        if since is None:
            read = ready.addCallback(lambda _: broker.position(channel)).addCallback(
                lambda p: Joined(p, []))
        else:
            read = ready.addCallback(lambda _: broker.recover(channel, since)).addCallback(
                self._recovered, channel, since, best_effort)

        def failed(failure: Failure) -> Failure:
            if self._standins.get((channel, subscriber)) is joining:  # not a later join's
                self.unsubscribe(channel, subscriber)
            return failure

        return read.addCallbacks(self._joint, failed, callbackArgs=(channel, joining))

    def _recovered(self, recovery: Recovery, channel: str, since: StreamPosition,
                   best_effort: bool) -> Deferred[Joined]:
        if recovery.recovered or not best_effort:
            missed = recovery.publications if recovery.recovered else []
            return succeed(Joined(recovery.position, missed, recovery.recovered, len(missed)))
        # What history still has: after the client's offset if its epoch is current.
        if since.epoch != recovery.position.epoch:
            since = StreamPosition(recovery.position.epoch, 0)
        return self.broker.history(channel, since, None, False).addCallback(
            lambda result: Joined(recovery.position, result[0], False, len(result[0])))

    def _joint(self, joined: Joined, channel: str, joining: _Joining) -> Joined:
        subscriber = joining.subscriber
        publications = list(joined.publications)
        last = publications[-1] if publications else joined.position
        edge = StreamPosition(last.epoch, last.offset)
        for publication in joining.held:  # in the order the broker delivered them
            if _after(publication, edge):
                publications.append(publication)
                edge = StreamPosition(publication.epoch, publication.offset)
        if self._standins.get((channel, subscriber)) is joining:  # still subscribed
            self._replace(channel, subscriber, joining, _Joint(self, channel, subscriber, edge))
        return Joined(joined.position, publications, joined.recovered, joined.missed)

    def _replace(self, channel: str, subscriber: Subscriber, old: Subscriber,
                 new: _Joint | None) -> None:
        """Swap C{subscriber}'s stand-in C{old} for C{new} (None: itself)."""
        subscribers = self._channels.get(channel)
        if subscribers is None or old not in subscribers:
            return
        subscribers.discard(old)
        if new is None:
            subscribers.add(subscriber)
            self._standins.pop((channel, subscriber), None)
        else:
            subscribers.add(new)
            self._standins[(channel, subscriber)] = new

    def _resync(self, channel: str) -> None:
        """The broker lost part of C{channel}'s live stream: each subscriber rejoins."""
        for subscriber in self.subscribers(channel):
            resync = getattr(subscriber, "resync", None)
            if resync is not None:
                try:
                    resync()
                except Exception:
                    _log.failure("resync of {subscriber} on {channel} failed",
                                 subscriber=subscriber, channel=channel)

    # -- publishing and reading ---------------------------------------------------

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        """
        Publish C{data} (JSON text as UTF-8) on C{channel}.  Fires with the
        numbered L{Publication} once the broker took it; local subscribers
        may have it before or after that.  Fails with L{BrokerUnavailable}.
        """
        return self.broker.publish(channel, data)

    def position(self, channel: str) -> Deferred[StreamPosition]:
        return self.broker.position(channel)

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool) -> Deferred[tuple[list[Publication], StreamPosition]]:
        """Kept publications (see L{Streams.history}) and the current position."""
        return self.broker.history(channel, since, limit, reverse)

    def session(self, client_id: str) -> Deferred[Session | None]:
        """A raw client's held session, or None."""
        return self.broker.sessions.get(client_id)

    def keep_session(self, session: Session, ttl: float) -> Deferred[None]:
        """Hold C{session} for C{ttl} seconds (what a resume will take)."""
        return self.broker.sessions.put(session, ttl)

    # -- what spans the nodes --------------------------------------------------------

    def presence(self, channel: str) -> Deferred[list[Member]]:
        """Everyone subscribed to C{channel}, on every node sharing the broker."""
        local = [Member(i.client_id, i.user, i.transport) for i in self.members(channel)]
        return self.broker.cluster.presence(channel, local)

    def _local_members(self) -> dict[str, list[Member]]:
        return {channel: [Member(i.client_id, i.user, i.transport)
                          for i in self.members(channel)] for channel in self._channels}

    def announce(self, channel: str, kind: str, info: bytes) -> None:
        """Tell the other nodes' subscribers that a client joined or left (JSON C{info})."""
        self.broker.cluster.announce(channel, kind, info)

    def _announced(self, channel: str, kind: str, info: bytes) -> None:
        for subscriber in self.subscribers(channel):
            announced = getattr(subscriber, "announced", None)
            if announced is not None:
                announced(kind, info)

    def survey(self, kind: str, request: dict[str, Any]) -> Deferred[list[Any]]:
        """Every node's answer to C{kind} (see L{Cluster.survey})."""
        return self.broker.cluster.survey(kind, request)

    def answer_surveys(self, handler: SurveyHandler) -> None:
        self.broker.cluster.set_survey_handler(handler)

    # -- what is here ----------------------------------------------------------------

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(subscribers) for name, subscribers in self._channels.items()}

    def subscriber_count(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def subscribers(self, channel: str) -> tuple[Subscriber, ...]:
        """The channel's subscribers (themselves, not their stand-ins)."""
        return tuple(getattr(s, "subscriber", s) for s in self._channels.get(channel, ()))

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
