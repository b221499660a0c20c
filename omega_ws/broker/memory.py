"""
The in-memory broker (C{memory://}, the default): everything in this
process, nothing shared, nothing kept across a restart.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from .history import Publication, Recovery, StreamPosition, Streams
from .interface import (
    AnnounceHandler,
    BrokerUnavailable,
    Cluster,
    Member,
    PresenceSource,
    PublicationHandler,
    ResyncHandler,
    SurveyHandler,
)
from .sessions import MemorySessions, SessionStore

__all__ = ["MemoryBroker", "SingleNode"]


class SingleNode:
    """The cluster of one: presence is the local members, a survey asks this node."""

    def __init__(self) -> None:
        self._survey_handler: SurveyHandler = lambda kind, request: {}

    def set_presence_source(self, source: PresenceSource) -> None:
        return None

    def presence(self, channel: str, local: list[Member]) -> Deferred[list[Member]]:
        return succeed(local)

    def present(self, channel: str, member: Member) -> None:
        return None

    def absent(self, channel: str, client_id: str) -> None:
        return None

    def set_announce_handler(self, handler: AnnounceHandler) -> None:
        return None

    def announce(self, channel: str, kind: str, info: bytes) -> None:
        return None

    def set_survey_handler(self, handler: SurveyHandler) -> None:
        self._survey_handler = handler

    def survey(self, kind: str, request: dict[str, Any]) -> Deferred[list[Any]]:
        return succeed([self._survey_handler(kind, request)])


class MemoryBroker:
    """
    Everything in this process.  Streams live as long as the broker: a new
    broker (a restart) starts every channel on a new epoch.

    With C{deliver_later}, publications reach the hub on a later reactor
    turn, after C{publish}'s Deferred fired, as they would from a broker in
    another process: the contract suite runs the hub and the wires that way.
    """

    def __init__(self, clock: IReactorTime, history_size: int = 1000,
                 history_ttl: float = 300.0, meta_ttl: float = 3600.0, *,
                 history_max_bytes: int = 16 * 1024 * 1024,
                 history_total_bytes: int = 256 * 1024 * 1024,
                 max_streams: int = 100000, max_sessions: int = 100000,
                 deliver_later: bool = False) -> None:
        self._clock = clock
        self._deliver_later = deliver_later
        self._handler: PublicationHandler = lambda publication: None
        self._streams = Streams(history_size, history_ttl, meta_ttl, history_max_bytes,
                                history_total_bytes, max_streams)
        self._sessions = MemorySessions(clock, max_sessions)
        self.sessions: SessionStore = self._sessions
        self.cluster: Cluster = SingleNode()
        self._running = False

    def stats(self) -> dict[str, int]:
        """What it holds, for the metrics: streams, history bytes, sessions, drops."""
        streams = self._streams
        return {"streams": len(streams), "history_bytes": streams.bytes,
                "history_dropped": streams.dropped, "streams_evicted": streams.evicted_streams,
                "sessions": len(self._sessions), "sessions_evicted": self._sessions.evicted}

    def set_handler(self, handler: PublicationHandler) -> None:
        self._handler = handler

    def set_resync_handler(self, handler: ResyncHandler) -> None:
        return None  # one process: its streams never break

    def start(self) -> Deferred[None]:
        self._running = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self._running = False
        return succeed(None)

    @property
    def healthy(self) -> bool:
        return self._running

    @property
    def problem(self) -> str:
        return ""  # stopped is all there is to say: "broker unreachable"

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        if not self._running:
            return fail(BrokerUnavailable("the memory broker is stopped"))
        publication = self._streams.add(channel, data, self._clock.seconds())
        if self._deliver_later:
            self._clock.callLater(0, self._handler, publication)
        else:
            self._handler(publication)
        return succeed(publication)

    def subscribe(self, channel: str) -> None:
        pass

    def unsubscribe(self, channel: str) -> None:
        pass

    def subscribed(self, channel: str) -> Deferred[None]:
        return succeed(None)

    def position(self, channel: str) -> Deferred[StreamPosition]:
        return succeed(self._streams.position(channel, self._clock.seconds()))

    def recover(self, channel: str, since: StreamPosition) -> Deferred[Recovery]:
        return succeed(self._streams.recover(channel, since, self._clock.seconds()))

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool) -> Deferred[tuple[list[Publication], StreamPosition]]:
        now = self._clock.seconds()
        publications = self._streams.history(channel, now, since, limit, reverse)
        return succeed((publications, self._streams.position(channel, now)))

    def housekeeping(self, now: float) -> None:
        self._streams.expire(now)
        self.sessions.expire(now)
