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
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from .history import Publication, Recovery, StreamPosition
from .sessions import SessionStore

__all__ = ["AnnounceHandler", "Broker", "BrokerUnavailable", "Cluster", "Member",
           "PresenceSource", "PublicationHandler", "ResyncHandler", "SurveyHandler"]


class BrokerUnavailable(Exception):
    """The broker cannot take publications now; a temporary condition."""


@dataclass(frozen=True, slots=True)
class Member:
    """Someone subscribed to a channel, for presence."""

    client_id: str
    user: str
    transport: str


PublicationHandler = Callable[[Publication], None]
# A channel whose live stream broke (a gap, a foreign epoch, a stall): its
# subscribers must rejoin from their positions.
ResyncHandler = Callable[[str], None]
# (channel, "join" or "leave", the client's info as JSON) from another node.
AnnounceHandler = Callable[[str, str, bytes], None]
# Every local channel with its local members.
PresenceSource = Callable[[], dict[str, list[Member]]]
# (kind, request) -> this node's answer, JSON-serializable.
SurveyHandler = Callable[[str, dict[str, Any]], Any]


class Cluster(Protocol):
    """What spans the nodes sharing a broker (one node for the memory broker)."""

    def set_presence_source(self, source: PresenceSource) -> None:
        """Where this node's members come from."""

    def presence(self, channel: str, local: list[Member]) -> Deferred[list[Member]]:
        """Everyone subscribed to C{channel} on any node; C{local} are this node's."""

    def present(self, channel: str, member: Member) -> None:
        """C{member} subscribed to C{channel} here (tell the others now, not at a sweep)."""

    def absent(self, channel: str, client_id: str) -> None:
        """C{client_id} left C{channel} here."""

    def set_announce_handler(self, handler: AnnounceHandler) -> None:
        """Join/leave of another node's clients go to C{handler}."""

    def announce(self, channel: str, kind: str, info: bytes) -> None:
        """Tell the other nodes that a client joined or left C{channel}."""

    def set_survey_handler(self, handler: SurveyHandler) -> None:
        """How this node answers surveys (channels, info, disconnect)."""

    def survey(self, kind: str, request: dict[str, Any]) -> Deferred[list[Any]]:
        """Every node's answer to C{kind}, this node's first."""


class Broker(Protocol):
    """What the hub needs of a broker."""

    sessions: SessionStore
    cluster: Cluster

    def set_handler(self, handler: PublicationHandler) -> None:
        """Deliver every publication of a subscribed channel to C{handler}."""

    def set_resync_handler(self, handler: ResyncHandler) -> None:
        """Name to C{handler} each channel whose live stream broke."""

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

    def subscribed(self, channel: str) -> Deferred[None]:
        """
        Fires once every publication on C{channel} from now on will be
        handed over (a shared broker confirmed the subscription); reads
        that join a subscriber to the stream wait for it.
        """

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

    @property
    def problem(self) -> str:
        """Why they cannot, for /health; empty when they can."""
