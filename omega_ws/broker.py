"""
Brokers carry publications between the hub and wherever they are shared.

The hub talks to one small interface, L{Broker}; L{MemoryBroker} keeps
everything in the process and is the default (C{memory://}).  A broker
assigns each publication the channel's next C{offset} and the stream's
C{epoch}, and hands it back to the hub through the handler it was given,
for every subscriber in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from .history import Publication, Recovery, StreamPosition, Streams
from .sessions import MemorySessions, SessionStore

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "Publication", "make_broker"]


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


class MemoryBroker:
    """
    Everything in this process.  Streams live as long as the broker: a new
    broker (a restart) starts every channel on a new epoch.
    """

    def __init__(self, clock: IReactorTime, history_size: int = 1000,
                 history_ttl: float = 300.0, meta_ttl: float = 3600.0, *,
                 history_max_bytes: int = 16 * 1024 * 1024,
                 history_total_bytes: int = 256 * 1024 * 1024,
                 max_streams: int = 100000, max_sessions: int = 100000) -> None:
        self._clock = clock
        self._handler: PublicationHandler = lambda publication: None
        self._streams = Streams(history_size, history_ttl, meta_ttl, history_max_bytes,
                                history_total_bytes, max_streams)
        self._sessions = MemorySessions(clock, max_sessions)
        self.sessions: SessionStore = self._sessions
        self._running = False

    def stats(self) -> dict[str, int]:
        """What it holds, for the metrics: streams, history bytes, sessions, drops."""
        streams = self._streams
        return {"streams": len(streams), "history_bytes": streams.bytes,
                "history_dropped": streams.dropped, "streams_evicted": streams.evicted_streams,
                "sessions": len(self._sessions), "sessions_evicted": self._sessions.evicted}

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
        publication = self._streams.add(channel, data, self._clock.seconds())
        self._handler(publication)
        return succeed(publication)

    def subscribe(self, channel: str) -> None:
        pass

    def unsubscribe(self, channel: str) -> None:
        pass

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


def make_broker(config: Config, clock: IReactorTime) -> Broker:
    """The broker for a validated configuration."""
    url = config.broker.url
    if url.startswith("memory://"):
        channels = config.channels
        # A stream outlives its history long enough for any held session to resume.
        meta_ttl = max(3600.0, channels.history_ttl, config.reconnect.session_ttl) * 2
        return MemoryBroker(clock, channels.history_size, channels.history_ttl, meta_ttl,
                            history_max_bytes=channels.history_max_bytes,
                            history_total_bytes=channels.history_total_bytes,
                            max_streams=channels.max_streams,
                            max_sessions=config.reconnect.max_sessions)
    raise ValueError(f"unsupported broker URL {url!r}")
